"""Resource limits of a job's attempts (what each one is, its flag, its unit), and the sizes
and durations users write ('512M', '1h30m'). Pure data and parsing, no I/O."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from operator import attrgetter
from typing import Final, TypeVar

from dts.errors import InvalidArgument

N = TypeVar("N", int, float)


def lower_limit(a: N, b: N) -> N:
    """The stricter of two limits where 0 means none."""
    return b if a == 0 else a if b == 0 else min(a, b)


class LimitUnit(StrEnum):
    """How the value of a limit is written and shown."""

    SECONDS = "seconds"  # whole seconds, shown as '10s'
    SIZE = "size"  # bytes, written and shown with K, M, G, T ('512M')
    COUNT = "count"  # a number of things


@dataclass(frozen=True)
class LimitField:
    """One resource limit a job may ask for, as every part of dts needs to know it."""

    name: str  # the field of Limits; the option is --max-<name> (dts-client submit, dts-worker)
    unit: LimitUnit
    wire: str  # its field in the dts.v1.Limits message, and its key in dts-client's --json
    # enforced by the kernel as RLIMIT_<rlimit>, set by `prlimit --<rlimit in lower case>`
    # (dts.worker.sandbox); '' where the worker enforces it itself
    rlimit: str
    submit_help: str  # of dts-client submit --max-<name>
    worker_help: str = ""  # of dts-worker --max-<name> (the kernel's limits; see LIMITS)

    @property
    def flag(self) -> str:
        return f"--max-{self.name}"

    @property
    def dest(self) -> str:
        """The attribute argparse keeps the option's value in."""
        return f"max_{self.name}"

    def show(self, value: int) -> str:
        """`value` as a user would write it: '10s', '512M', '64'."""
        if self.unit is LimitUnit.SECONDS:
            return f"{value}s"
        if self.unit is LimitUnit.SIZE:
            return format_size(value)
        return str(value)


# Every limit, once, in the order of Limits' fields (and of the dts.v1.Limits message). Adding
# one means a field of Limits, a row here and a field of dts.v1.Limits. The worker's options
# for the kernel's limits come from here; output, a cap the worker always has, is its own
# --max-output (dts.worker.config).
LIMITS: Final = (
    LimitField(
        "cpu",
        LimitUnit.SECONDS,
        wire="cpu_seconds",
        rlimit="CPU",
        submit_help="CPU seconds each process of the job may use (SIGXCPU, then SIGKILL)",
        worker_help="seconds of CPU time per job process (RLIMIT_CPU; 0: none; jobs may ask "
        "for less)",
    ),
    LimitField(
        "memory",
        LimitUnit.SIZE,
        wire="memory_bytes",
        rlimit="AS",
        submit_help="address space of each process of the job (K, M, G)",
        worker_help="bytes of address space per job process (RLIMIT_AS, K/M/G; 0: none)",
    ),
    LimitField(
        "files",
        LimitUnit.COUNT,
        wire="open_files",
        rlimit="NOFILE",
        submit_help="open files of each process of the job",
        worker_help="open files per job process (RLIMIT_NOFILE; 0: the worker's own limit)",
    ),
    LimitField(
        "processes",
        LimitUnit.COUNT,
        wire="processes",
        rlimit="NPROC",
        submit_help="processes of the job's user on the worker (not enforced for root)",
        worker_help="processes of the jobs' user (RLIMIT_NPROC, not enforced for root; 0: none)",
    ),
    LimitField(
        "output",
        LimitUnit.SIZE,
        wire="output_bytes",
        rlimit="",
        submit_help="bytes of stdout and of stderr to keep (K, M, G; default: the worker's cap)",
    ),
)
LIMIT_NAMES: Final = tuple(f.name for f in LIMITS)  # Limits' fields, in order
RLIMIT_LIMITS: Final = tuple(f for f in LIMITS if f.rlimit)  # those the kernel enforces


@dataclass(frozen=True)
class Limits:
    """Resource limits of each attempt of a job; 0 means none asked for (see LIMITS).

    A job's limits can only lower the ones its worker's operator set (`within`), never
    raise them.
    """

    cpu: int = 0  # seconds of CPU time (RLIMIT_CPU: SIGXCPU, then SIGKILL a second later)
    memory: int = 0  # bytes of address space (RLIMIT_AS)
    files: int = 0  # open file descriptors (RLIMIT_NOFILE)
    processes: int = 0  # processes and threads of the job's user (RLIMIT_NPROC)
    output: int = 0  # bytes kept of stdout and of stderr

    def within(self, cap: Limits) -> Limits:
        """These limits, lowered to `cap` wherever `cap` is stricter or these set none."""
        if self == NO_LIMITS:
            return cap
        return Limits(*map(lower_limit, _limit_values(self), _limit_values(cap)))

    @property
    def any(self) -> bool:
        return self != NO_LIMITS

    @property
    def values(self) -> tuple[int, ...]:
        """The limits in the order of LIMIT_NAMES (no dataclasses.astuple: it deep-copies)."""
        return _limit_values(self)

    @property
    def rlimits(self) -> bool:
        """Whether any of the kernel-enforced limits (RLIMIT_LIMITS: all but output) is set."""
        return any(_rlimit_values(self))

    def describe(self) -> str:
        """The set limits as a user would write them, e.g. 'cpu 10s, memory 512M'."""
        return ", ".join(
            f"{f.name} {f.show(v)}" for f, v in zip(LIMITS, self.values, strict=True) if v
        )


# the fields' getters, made once: a job's limits are read on every submit and every run
# (attrgetter of two names or more answers a tuple)
_limit_values: Final[Callable[[Limits], tuple[int, ...]]] = attrgetter(*LIMIT_NAMES)
_rlimit_values: Final[Callable[[Limits], tuple[int, ...]]] = attrgetter(
    *(f.name for f in RLIMIT_LIMITS)
)
NO_LIMITS: Final = Limits()
SIZE_UNITS: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from '4096', '64K', '512M', '2G' (binary units; 'KiB', 'MB' and the like too)."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise InvalidArgument(f"not a size (bytes, or with K, M, G, T): {text!r}")
    return int(m[1]) * SIZE_UNITS[m[2].upper()]


_SIZE: Final = re.compile(r"(\d{1,19})\s*([kKmMgGtT]?)(?:[iI]?[bB])?")


def format_size(n: int) -> str:
    """The shortest exact form of `n` bytes: 1536 -> '1536', 2097152 -> '2M'."""
    for unit in ("T", "G", "M", "K"):
        if n >= SIZE_UNITS[unit] and n % SIZE_UNITS[unit] == 0:
            return f"{n // SIZE_UNITS[unit]}{unit}"
    return str(n)


DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_DURATION: Final = 100 * 365 * 86400  # a century: longer is a typo, not a plan


def parse_duration(text: str) -> float:
    """Seconds from '30s', '5m', '1h', '1d', '2w' or a sum such as '1h30m'; a bare number is
    seconds. Positive and at most a century."""
    s = text.strip().lower()
    if _SECONDS.fullmatch(s):
        value = float(s)
    elif s and _DURATION.fullmatch(s):
        value = sum(float(n) * DURATION_UNITS[u] for n, u in _DURATION_PART.findall(s))
    else:
        raise InvalidArgument(f"not a duration (such as 30s, 5m, 1h, 1d, 1h30m): {text!r}")
    if not 0 < value <= MAX_DURATION:
        raise InvalidArgument(f"a duration must be more than 0 and at most 100 years: {text!r}")
    return value


def format_duration(seconds: float) -> str:
    """The shortest exact form of a whole number of seconds: 5400 -> '1h30m'; else '%gs'."""
    if seconds != int(seconds) or seconds <= 0:
        return f"{seconds:g}s"
    left, parts = int(seconds), []
    for unit in ("w", "d", "h", "m", "s"):
        n, left = divmod(left, DURATION_UNITS[unit])
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


_SECONDS: Final = re.compile(r"\d{1,12}(?:\.\d{1,9})?")
_DURATION: Final = re.compile(r"(?:\d{1,12}(?:\.\d{1,9})?[smhdw])+")
_DURATION_PART: Final = re.compile(r"(\d{1,12}(?:\.\d{1,9})?)([smhdw])")
