"""dts-server: the coordinator, where every rule of the system lives, the store that keeps the
history, the duties that move jobs on their own, and the gRPC API in front of them."""
