"""systemd's sd_notify protocol (READY=1, STOPPING=1, STATUS=..., WATCHDOG=1) in a few lines."""

from __future__ import annotations

import os
import socket


def sd_notify(message: str) -> bool:
    """Send `message` to $NOTIFY_SOCKET; False when not run by systemd (or it failed)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(message.encode())
        return True
    except OSError:
        return False
