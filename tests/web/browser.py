"""What the browser tests and the screenshot script share: Debian's chromium driven by
Playwright (no browser download), and dts-web started as the program a user runs."""

from __future__ import annotations

import os
import shutil
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.harness import BIN, Proc, clean_env, free_port, wait_until

CHROMIUM = os.environ.get("DTS_CHROMIUM", "/usr/bin/chromium")


def chromium_missing() -> str:
    """Why the browser cannot run here ('' when it can)."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"{CHROMIUM} is not installed (Debian's chromium package)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return ""


class WebProcess(Proc):
    """A dts-web on a free loopback port."""

    def __init__(self, workdir: Path, server: str, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [str(BIN / "dts-web"), "--listen", f"127.0.0.1:{self.port}", "--server", server,
             *extra],
            workdir / f"web-{self.port}.log",
            env=clean_env(),
        )  # fmt: skip

    def start(self) -> None:
        super().start()
        wait_until(lambda: not self.alive() or get(f"{self.url}/healthz"), 20, what="dts-web")
        assert self.alive(), self.output()


def get(url: str, **kw: object) -> bytes:
    """The body of a GET of `url` (the connection closed after it)."""
    with urllib.request.urlopen(url, timeout=2, **kw) as answer:  # type: ignore[arg-type]
        body: bytes = answer.read()
    return body


@contextmanager
def web_process(workdir: Path, server: str, *extra: str) -> Iterator[WebProcess]:
    w = WebProcess(workdir, server, *extra)
    w.start()
    try:
        yield w
    finally:
        w.stop()
