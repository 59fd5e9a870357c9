"""The follows refresher: reads which jobs someone follows (on any server) a few times a
second, for this server's heartbeats and claims to tell workers."""

from __future__ import annotations

from dts.server.coordinator import Coordinator
from dts.server.duties.loop import Loop
from dts.server.live import LiveHub

REFRESH_EVERY = 0.25  # seconds; a follow reaches a worker within this plus a heartbeat


class FollowsRefresher(Loop):
    """Keeps the hub's copy of the followed set fresh."""

    name = "follows"

    def __init__(self, coordinator: Coordinator, hub: LiveHub) -> None:
        super().__init__(coordinator)
        self.hub = hub

    def tick(self) -> float:
        self.hub.refresh()
        return REFRESH_EVERY
