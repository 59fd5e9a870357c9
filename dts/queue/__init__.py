"""The queue between the server and its workers: job ids, in Redis (`dts.queue.redis`)."""
