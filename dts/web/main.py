"""dts-web's entry point: read the options, then serve the dashboard with uvicorn until
SIGTERM or Ctrl+C."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence

import uvicorn

from dts.channel import parse_hostport
from dts.errors import DtsError
from dts.web.app import create_app
from dts.web.config import WebConfig, web_config
from dts.web.dashboard import Dashboard

log = logging.getLogger("dts.web")


def serve(cfg: WebConfig) -> None:
    host, port = parse_hostport(cfg.listen, "--listen")
    dash = Dashboard(cfg)
    scheme = "https" if cfg.https else "http"
    log.info("dts-web on %s://%s for %s", scheme, cfg.listen, cfg.server)
    # uvicorn stops on SIGTERM, then raises it again with the handler found before it ran:
    # this one makes that a clean exit (0), as systemd and supervisord expect of a stop
    signal.signal(signal.SIGTERM, _stopped)
    uvicorn.run(
        create_app(dash),
        host=host,
        port=port,
        ssl_certfile=cfg.tls_cert or None,
        ssl_keyfile=cfg.tls_key or None,
        log_level=cfg.log_level,
        # behind a reverse proxy on this machine, its X-Forwarded-Proto says https
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1,::1",
        server_header=False,
    )


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = web_config(argv)
    except DtsError as e:
        sys.stderr.write(f"dts-web: error: {e.message}\n")
        return 2
    logging.basicConfig(
        level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        serve(cfg)
    except DtsError as e:
        sys.stderr.write(f"dts-web: error: {e.message}\n")
        return 2
    except OSError as e:  # the address is taken, a certificate unreadable, ...
        sys.stderr.write(f"dts-web: error: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
