"""The settings the coordinator's rules depend on, and the timings derived from them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """The settings the coordinator's rules depend on, and the timings derived from them (each
    computed here only)."""

    worker_timeout: float = 30.0  # a worker's lease: seconds it may go without a heartbeat
    default_retries: int = 0
    default_backoff: float = 1.0
    default_timeout: float = 0.0
    max_backoff: float = 3600.0
    max_lost: int = 3  # attempts lost with their worker before a job fails
    max_waiters: int = 10_000
    server: str = ""  # this server's address, as workers' records show it

    @property
    def heartbeat_interval(self) -> float:
        """How often a worker renews its leases: four times a lease, and at least each second."""
        return min(1.0, self.worker_timeout / 4)

    @property
    def reap_interval(self) -> float:
        """How often lost leases are looked for: as often as they are renewed."""
        return max(0.05, self.heartbeat_interval)

    @property
    def inflight_grace(self) -> float:
        """The furthest deadline a pop sets on an id it takes (its taker's lease, twice, and a
        minute for clocks): one further away was set by no pop."""
        return 2 * self.worker_timeout + 60
