"""A tap on a running attempt's output while someone follows it: the bytes read since the
last send, at their offsets, bounded; the first take carries all the runner kept so far."""

from __future__ import annotations

import threading

from dts.live import Chunk

MAX_PENDING = 1 << 20  # bytes a tap keeps unsent; more is dropped (the stored output has it)
# (what was kept before the follow goes in whole: at most the worker's output cap per stream)


class Tap:
    """Filled by the attempt's runner thread, emptied by the live sender's."""

    def __init__(self, job_id: int, attempt: int) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.primed = False  # the runner has put in what it captured before the tap
        self._lock = threading.Lock()
        self._pieces: list[tuple[int, int, bytes]] = []  # (stream 0 out / 1 err, offset, data)
        self._size = 0
        self._said = False  # a first chunk went, even an empty one: the follower knows

    def add(self, stream: int, offset: int, data: bytes, whole: bool = False) -> None:
        with self._lock:
            if self._size + len(data) > MAX_PENDING and not whole:
                return  # a slow link: a gap, filled from the stored output in the end
            self._pieces.append((stream, offset, data))
            self._size += len(data)

    def take(self) -> list[Chunk]:
        """What was added since the last take, as chunks (contiguous bytes merged)."""
        with self._lock:
            pieces, self._pieces, self._size = self._pieces, [], 0
        if not pieces:
            if self.primed and not self._said:  # an attempt silent so far: say so once
                self._said = True
                return [Chunk(self.job_id, self.attempt)]
            return []
        self._said = True
        chunks: list[Chunk] = []
        runs: list[list[tuple[int, bytearray]]] = [[], []]  # per stream: (offset, bytes)
        for stream, offset, data in pieces:
            run = runs[stream]
            if run and run[-1][0] + len(run[-1][1]) == offset:
                run[-1][1].extend(data)
            else:
                run.append((offset, bytearray(data)))
        outs, errs = runs
        for i in range(max(len(outs), len(errs))):
            out = outs[i] if i < len(outs) else (0, bytearray())
            err = errs[i] if i < len(errs) else (0, bytearray())
            chunks.append(
                Chunk(self.job_id, self.attempt, bytes(out[1]), bytes(err[1]), out[0], err[0])
            )
        return chunks
