"""The server's gRPC edge: the event loop and pools calls run in, the servicers that turn
wire messages into coordinator calls, the health service, and token checks."""
