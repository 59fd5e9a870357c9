"""Generated protobuf and gRPC code for the dts.v1 wire contract (do not edit; `make proto`)."""
