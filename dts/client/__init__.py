"""The client side of dts: the Python API (`from dts.client import Client`), the submit
pipeline under it, and the dts-client command line."""

from dts.client.api import Client

__all__ = ["Client"]
