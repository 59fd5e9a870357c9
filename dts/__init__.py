"""dts: a distributed task scheduler (gRPC server, SQLite history, Redis queue, shell workers)."""

__version__ = "0.1.0"
