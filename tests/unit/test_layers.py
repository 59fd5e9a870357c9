"""The layering of dts, read from the imports of its source (ast): a new import that breaks it
fails here, naming the module, the line and the rule.

From the bottom: the domain (errors, model) imports nothing else of dts; the shared pieces
(backoff, wire, options, channel, queue, daemon) import only what is below them; the roles
(server, worker, client) never import one another, and the web dashboard is a client (it
imports dts.client, never the server or the worker); inside the server, the coordinator holds
the rules and knows the store and the queue only as protocols, and nothing imports upward.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "dts"

MODEL = ("dts.errors", "dts.limits", "dts.domain", "dts.controls", "dts.schedule")
SHARED = (
    *MODEL,
    "dts.backoff",
    "dts.wire",
    "dts.wire_schedule",
    "dts.live",
    "dts.wire_live",
    "dts.v1",
    "dts.options",
    "dts.failover",
    "dts.channel",
    "dts.metrics",
)
QUEUE_API = ("dts.queue",)  # the protocol module itself, not dts.queue.redis (see `exact`)
# the coordinator's own parts: the store protocol and the rules it applies inside a transaction
RULES = (
    "dts.server.activity",
    "dts.server.store",
    "dts.server.dependencies",
    "dts.server.observer",
    "dts.server.outcomes",
    "dts.server.queues",
    "dts.server.sessions",
    "dts.server.settings",
    "dts.server.submits",
    "dts.server.unique",
    "dts.server.waiters",
)


@dataclass(frozen=True)
class Layer:
    """What the modules under `prefix` may import: dts modules under `allowed` (a module is
    always allowed its own package's modules when `own` is set) and no third-party module
    under `banned`."""

    prefix: str
    allowed: tuple[str, ...]
    banned: tuple[str, ...] = ()
    own: bool = True
    exact: tuple[str, ...] = ()  # dts modules allowed by their exact name only


NO_IO = ("grpc", "google", "redis", "sqlite3", "configargparse", "psycopg", "psycopg_pool")

# The most specific prefix that names a module decides its layer.
LAYERS = (
    Layer("dts.errors", (), banned=NO_IO),
    Layer("dts.limits", ("dts.errors",), banned=NO_IO, own=False),
    Layer("dts.domain", ("dts.errors", "dts.limits"), banned=NO_IO, own=False),
    Layer("dts.controls", ("dts.errors",), banned=NO_IO, own=False),  # queue controls' model
    Layer("dts.schedule", ("dts.errors", "dts.limits", "dts.domain"), banned=NO_IO, own=False),
    Layer("dts.dependencies", MODEL, banned=NO_IO, own=False),
    Layer("dts.backoff", (), banned=NO_IO),
    Layer("dts.v1", ("dts.v1",)),
    Layer("dts.wire", (*MODEL, "dts.v1"), banned=("redis", "sqlite3")),
    Layer("dts.wire_schedule", (*MODEL, "dts.v1", "dts.wire"), banned=("redis", "sqlite3")),
    Layer("dts.live", (), banned=NO_IO, own=False),  # live output as data: chunks, offsets
    Layer("dts.wire_live", ("dts.live", "dts.v1"), banned=("redis", "sqlite3"), own=False),
    Layer("dts.options", MODEL, banned=("grpc", "redis", "sqlite3")),
    Layer("dts.failover", (), banned=("redis", "sqlite3"), own=False),
    Layer("dts.channel", (*MODEL, "dts.failover"), banned=("redis", "sqlite3")),
    # the /metrics endpoint both daemons serve (prometheus_client), and its option
    Layer("dts.metrics", (*MODEL, "dts.options"), banned=("grpc", "redis", "sqlite3"), own=False),
    Layer("dts.queue", MODEL, banned=("grpc", "redis", "sqlite3"), own=False),
    Layer(
        "dts.queue.redis",
        MODEL,
        banned=("grpc", "sqlite3"),
        exact=(*QUEUE_API, "dts.queue.sentinel"),
    ),
    Layer(
        "dts.queue.live",
        ("dts.live",),
        banned=("grpc", "sqlite3"),
        exact=("dts.queue.redis",),
        own=False,
    ),
    Layer("dts.queue.sentinel", MODEL, banned=("grpc", "sqlite3"), own=False),
    Layer("dts.daemon", (*MODEL, "dts.options"), banned=("grpc", "redis", "sqlite3")),
    # the server: rules at the bottom, then the store and duties, the API, then start-up
    Layer(
        "dts.server.coordinator",
        (*MODEL, "dts.backoff"),
        banned=NO_IO,
        exact=(*QUEUE_API, *RULES),
    ),
    Layer("dts.server.waiters", MODEL, banned=NO_IO, own=False),
    Layer("dts.server.activity", MODEL, banned=NO_IO, exact=("dts.server.store",)),
    # what the coordinator tells the metrics: hooks without I/O (the metrics are above)
    Layer("dts.server.observer", MODEL, banned=(*NO_IO, "prometheus_client"), own=False),
    Layer(
        "dts.server.metrics",
        MODEL,
        banned=("grpc", "redis", "sqlite3", "psycopg"),
        exact=("dts.server.observer",),
    ),
    Layer(
        "dts.server.outcomes", (*MODEL, "dts.backoff"), banned=NO_IO, exact=("dts.server.store",)
    ),
    Layer("dts.server.sessions", MODEL, banned=NO_IO, exact=("dts.server.store",)),
    Layer("dts.server.queues", MODEL, banned=NO_IO, exact=("dts.server.store", *QUEUE_API)),
    Layer("dts.server.settings", (), banned=NO_IO, own=False),
    Layer("dts.server.serving", MODEL, banned=NO_IO, own=False),  # queues live workers serve
    Layer(
        "dts.server.submits",
        (*MODEL, "dts.dependencies"),
        banned=NO_IO,
        exact=("dts.server.store", "dts.server.unique", "dts.server.dependencies"),
    ),
    Layer(
        "dts.server.dependencies",
        (*MODEL, "dts.dependencies"),
        banned=NO_IO,
        exact=("dts.server.store", "dts.server.outcomes"),
    ),
    Layer("dts.server.unique", MODEL, banned=NO_IO, exact=("dts.server.store",)),
    Layer("dts.server.store", MODEL, banned=NO_IO, own=False),
    Layer("dts.server.store.rows", MODEL, banned=NO_IO, own=False),
    Layer("dts.server.store.url", MODEL, banned=NO_IO, own=False),
    Layer("dts.server.store.schedules", MODEL, banned=NO_IO, exact=("dts.server.store.rows",)),
    Layer(
        "dts.server.store.queues",
        MODEL,
        banned=NO_IO,
        exact=("dts.server.store.reads",),
    ),
    Layer(
        "dts.server.store.dependencies",
        MODEL,
        banned=NO_IO,
        exact=("dts.server.store", "dts.server.store.reads"),
    ),
    Layer(
        "dts.server.store.reads",
        MODEL,
        banned=NO_IO,
        exact=("dts.server.store.rows",),
    ),
    Layer(
        "dts.server.store.postgres",
        MODEL,
        banned=("grpc", "redis", "sqlite3"),
        exact=(
            "dts.server.store",
            "dts.server.store.dependencies",
            "dts.server.store.lead",
            "dts.server.store.purge",
            "dts.server.store.queues",
            "dts.server.store.reads",
            "dts.server.store.rows",
            "dts.server.store.schedules",
            "dts.server.store.url",
        ),
    ),
    Layer("dts.server.store.lead", MODEL, banned=("grpc", "redis", "sqlite3"), own=False),
    Layer(
        "dts.server.store.sqlite",
        MODEL,
        banned=("grpc", "redis"),
        exact=(
            "dts.server.store",
            "dts.server.store.dependencies",
            "dts.server.store.purge",
            "dts.server.store.queues",
            "dts.server.store.reads",
            "dts.server.store.rows",
            "dts.server.store.schedules",
        ),
    ),
    Layer(
        "dts.server.schedules",
        (*MODEL, "dts.server.coordinator"),
        banned=NO_IO,
        exact=("dts.server.store",),
        own=False,
    ),
    Layer(
        "dts.server.store.purge",
        MODEL,
        banned=NO_IO,
        exact=(
            "dts.server.store.dependencies",
            "dts.server.store.reads",
            "dts.server.store.rows",
        ),
    ),
    # live output: follow interest and chunks in Redis, a worker's session checked in the store
    Layer(
        "dts.server.live",
        (*MODEL, "dts.live", "dts.queue.live"),
        banned=("grpc", "sqlite3"),
        exact=("dts.server.sessions", "dts.server.store"),
        own=False,
    ),
    # retention: the rules of deleting old jobs, on the store protocol
    Layer("dts.server.retention", MODEL, banned=NO_IO, exact=("dts.server.store",)),
    Layer(
        "dts.server.duties",
        (
            *MODEL,
            "dts.backoff",
            "dts.server.coordinator",
            "dts.server.retention",
            "dts.server.schedules",
            "dts.server.live",
        ),
        banned=("grpc", "redis", "sqlite3"),
    ),
    Layer(
        "dts.server.api",
        (
            *SHARED,
            "dts.server.coordinator",
            "dts.server.serving",
            "dts.server.dependencies",
            "dts.server.waiters",
            "dts.server.retention",
            "dts.server.schedules",
            "dts.server.live",
        ),
        banned=("redis", "sqlite3"),
    ),
    Layer(
        "dts.server.config",
        (
            *SHARED,
            "dts.daemon.config",
            "dts.queue.redis",
            "dts.server.api.auth",
            "dts.server.store.url",
        ),
        own=False,
    ),
    Layer("dts.server", (*SHARED, "dts.queue", "dts.daemon", "dts.server")),
    # the worker and the client: shared pieces and their own modules only
    Layer(
        "dts.worker",
        (*SHARED, "dts.queue", "dts.daemon"),
        banned=("sqlite3",),
    ),
    Layer("dts.client", SHARED, banned=("redis", "sqlite3")),
    Layer(
        "dts.client.purge",
        (*MODEL, "dts.client.args", "dts.client.cli"),
        banned=("grpc", "redis", "sqlite3"),
    ),
    # dts-client's submits in chunks with progress, and the unserved-queue warning
    Layer(
        "dts.client.sending",
        MODEL,
        banned=("redis", "sqlite3"),
        own=False,
        exact=("dts.client.api",),
    ),
    # dts-client's help pages and late global options: argparse only
    Layer(
        "dts.client.parsers",
        ("dts.options",),
        banned=("grpc", "redis", "sqlite3"),
        own=False,
        exact=("dts.client.args",),
    ),
    Layer(
        "dts.client.unique", MODEL, banned=("grpc", "redis", "sqlite3"), exact=("dts.client.args",)
    ),
    Layer(
        "dts.client.workflow",
        (
            *MODEL,
            "dts.dependencies",
            "dts.options",
            "dts.client.args",
            "dts.client.cli",
            "dts.client.sending",
        ),
        banned=("grpc", "redis", "sqlite3"),
    ),
    # the web dashboard: another client (through dts.client), never the server or the worker;
    # its chart and value formatting are pure
    Layer(
        "dts.web",
        (*SHARED, "dts.client"),
        banned=("redis", "sqlite3", "psycopg", "psycopg_pool"),
    ),
    Layer("dts.web.chart", MODEL, banned=NO_IO, own=False),
    Layer("dts.web.format", MODEL, banned=NO_IO, own=False),
    Layer("dts.devrun", (*MODEL, "dts.client", "dts.queue", "dts.options"), banned=("sqlite3",)),
)


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    name: str  # what it imports (absolute)
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[Import]:
    """Every import in the file, at any depth (in functions, under TYPE_CHECKING too)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(module, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = absolute(package, node.level, node.module or "")
            if base == "dts":  # `from dts import wire`: each name is a module (but __version__)
                found += [
                    Import(
                        module, "dts" if a.name.startswith("__") else f"dts.{a.name}", node.lineno
                    )
                    for a in node.names
                ]
            else:
                found.append(Import(module, base, node.lineno))
    return found


def absolute(package: str, level: int, name: str) -> str:
    """The absolute name of `from <level dots><name> import ...` written in `package`."""
    if not level:
        return name
    parts = package.split(".")
    anchor = parts[: len(parts) - level + 1]
    return ".".join([*anchor, name] if name else anchor)


def layer_of(module: str) -> Layer:
    matches = [ly for ly in LAYERS if module == ly.prefix or module.startswith(ly.prefix + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS in {__name__}"
    return max(matches, key=lambda ly: len(ly.prefix))


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violation(imp: Import) -> str | None:
    """Why `imp` breaks the layering, or None."""
    layer = layer_of(imp.module)
    if not under(imp.name, "dts"):
        top = imp.name.split(".")[0]
        return f"{layer.prefix} may not import {top}" if top in layer.banned else None
    if imp.name == "dts" or imp.name in layer.exact:
        return None
    if any(under(imp.name, a) for a in layer.allowed):
        return None
    if layer.own and under(imp.name, layer.prefix):
        return None
    return f"{layer.prefix} may not import {imp.name}"


# dts/__init__.py holds only the version, which any module may read
SOURCES = sorted(
    p
    for p in PACKAGE.rglob("*.py")
    if "v1" not in p.relative_to(PACKAGE).parts and p != PACKAGE / "__init__.py"
)


def test_the_layering_holds() -> None:
    broken = [
        f"{imp.module} line {imp.line}: {why}"
        for path in SOURCES
        for imp in imports_of(path)
        if (why := violation(imp))
    ]
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize(
    ("module", "name", "broken"),
    [
        ("dts.domain", "dts.wire", True),  # the model knows no wire
        ("dts.domain", "grpc", True),
        ("dts.domain", "dts.errors", False),
        ("dts.server.coordinator", "redis", True),
        ("dts.server.coordinator", "dts.queue.redis", True),  # the implementation, not the API
        ("dts.server.coordinator", "dts.queue", False),
        ("dts.server.coordinator", "dts.server.store.sqlite", True),
        ("dts.server.coordinator", "dts.server.store", False),
        ("dts.server.coordinator", "dts.server.api.rpc", True),  # upward
        ("dts.server.coordinator", "dts.server.config", True),
        ("dts.server.store.sqlite", "dts.server.coordinator", True),
        ("dts.server.api.servicer", "dts.server.store.sqlite", True),
        ("dts.server.main", "dts.server.store.sqlite", False),
        ("dts.worker.main", "dts.server.store", True),
        ("dts.worker.main", "dts.client", True),
        ("dts.client.api", "dts.worker.runner", True),
        ("dts.client.api", "dts.queue.redis", True),
        ("dts.queue.redis", "dts.server.coordinator", True),
        ("dts.daemon.process", "dts.server.main", True),
        ("dts.wire", "dts.server.api.rpc", True),
        ("dts.web.app", "dts.server.api.auth", True),  # the dashboard is a client
        ("dts.web.pages", "dts.worker.main", True),
        ("dts.web.dashboard", "dts.client.api", False),
        ("dts.web.chart", "dts.web.app", True),
    ],
)
def test_the_rules_catch_what_they_should(module: str, name: str, broken: bool) -> None:
    assert (violation(Import(module, name, 1)) is not None) is broken


def test_relative_imports_are_resolved() -> None:
    # the checker must not be blind to `from ..store import x` in a package
    assert absolute("dts.server.duties", 2, "store") == "dts.server.store"
    assert absolute("dts.server.duties", 1, "loop") == "dts.server.duties.loop"
    assert absolute("dts.server.duties", 1, "") == "dts.server.duties"
    assert absolute("dts.server", 0, "dts.domain") == "dts.domain"
    assert module_name(PACKAGE / "server" / "duties" / "__init__.py") == "dts.server.duties"


def test_every_module_has_a_layer() -> None:
    for path in SOURCES:
        layer_of(module_name(path))


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        (
            "dts.server.coordinator",
            (
                "grpc",
                "redis",
                "sqlite3",
                "google",
                "configargparse",
                "psycopg",
                "prometheus_client",
            ),
        ),
        ("dts.domain", ("grpc", "redis", "sqlite3", "google", "configargparse")),
        ("dts.client", ("redis", "sqlite3", "configargparse", "psycopg")),
        ("dts.web.app", ("redis", "sqlite3", "psycopg")),
    ],
)
def test_what_a_module_loads_at_run_time(module: str, absent: tuple[str, ...]) -> None:
    # the same rules, seen from a fresh interpreter: nothing pulls them in on the side
    probe = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert not {m.split(".")[0] for m in out} & set(absent)
