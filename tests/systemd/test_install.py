"""`make install` and `make uninstall [PURGE=1]` on a fresh Debian, and the daemons without a
service manager, run with the commands of the README's Deploying section.

Expected duration: ~40 s (a container of its own).
"""

from __future__ import annotations

import pytest

from tests.systemd.container import SRC, Container, wait_for

pytestmark = pytest.mark.timeout(600)


def test_install_upgrade_daemons_uninstall_purge(fresh_box: Container) -> None:
    box = fresh_box
    assert box.run("test", "-e", "/usr/local/bin/dts-server", check=False).returncode != 0
    # make install; the operator's edit of a config survives a second install (an upgrade)
    box.install()
    box.sh("echo '# edited by the operator' >> /etc/dts/server.conf")
    box.install()
    assert "# edited by the operator" in box.run("cat", "/etc/dts/server.conf").stdout
    box.run("systemctl", "enable", "--now", "dts-server")
    assert box.run("dts-client", "ping").stdout == "SERVING\n"
    status = box.run("systemctl", "status", "dts-server", "--no-pager").stdout
    assert "active (running)" in status and "listening on" in status
    box.sh("systemctl enable --now dts-worker@{1..2}")
    job = box.run("dts-client", "submit", "--wait", "--", "echo", "before the upgrade")
    assert job.stdout == "before the upgrade\n"
    # the upgrade: install again and restart everything; this time with a supervisord pool
    box.install("SUPERVISOR=1")
    box.run("systemctl", "restart", "dts-server", "dts-workers.target")
    box.run("systemctl", "is-active", "dts-server", "dts-worker@1", "dts-worker@2")
    box.run("supervisorctl", "update")
    wait_for(
        lambda: "dts-test-02" in box.run("dts-client", "workers").stdout, 30, "supervised workers"
    )
    box.run("supervisorctl", "restart", "worker:*")
    warnings = box.run("journalctl", "-u", "dts-server", "-p", "warning", "--no-pager").stdout
    assert "ERROR" not in warnings

    # The daemons without a service manager (as the README shows them, from /var/lib/dts)
    box.run("systemctl", "stop", "dts-workers.target", "dts-server")
    daemon = (
        "set -e\n"
        "install -d -o dts -g dts /run/dts\n"
        "cd /var/lib/dts\n"
        "runuser -u dts -- dts-server --daemon --pidfile /run/dts/server.pid "
        "--log-file /var/log/dts/server.log\n"
        "dts-client ping\n"
    )
    assert box.sh(daemon).stdout == "SERVING\n"
    pid = box.run("cat", "/run/dts/server.pid").stdout.strip()
    assert box.run("ps", "-o", "user=", "-p", pid).stdout.strip() == "dts"
    box.run("mv", "/var/log/dts/server.log", "/var/log/dts/server.log.1")
    box.sh('kill -HUP "$(cat /run/dts/server.pid)"')
    wait_for(
        lambda: "reopened" in box.run("cat", "/var/log/dts/server.log", check=False).stdout,
        10,
        "the reopened log",
    )
    box.sh('kill -TERM "$(cat /run/dts/server.pid)"')
    wait_for(
        lambda: box.run("test", "-e", "/run/dts/server.pid", check=False).returncode != 0,
        20,
        "the pid file to go",
    )
    assert box.run("dts-client", "ping", check=False).returncode == 3

    # make uninstall: the programs and units go; settings, data, logs and the user stay
    box.run("systemctl", "start", "dts-server")
    box.run("make", "uninstall", cwd=SRC, timeout=180)
    for gone in (
        "/opt/dts",
        "/usr/local/bin/dts-server",
        "/usr/local/bin/dts-client",
        "/usr/local/bin/dts-web",
        "/etc/systemd/system/dts-server.service",
        "/etc/systemd/system/dts-web.service",
        "/etc/systemd/system/dts-worker@.service",
        "/etc/systemd/system/multi-user.target.wants/dts-worker@1.service",
        "/etc/supervisor/conf.d/dts-worker.conf",
    ):
        assert box.run("test", "-e", gone, check=False).returncode != 0, gone
    assert box.run("systemctl", "is-active", "dts-server", check=False).stdout.strip() in (
        "inactive",
        "unknown",
    )
    assert box.run("pgrep", "-f", "dts-", check=False).stdout == ""  # supervised ones too
    assert "worker" not in box.run("supervisorctl", "status", check=False).stdout
    for kept in ("/etc/dts/server.conf", "/var/lib/dts/dts.db", "/var/log/dts/server.log.1"):
        box.run("test", "-e", kept)
    box.run("getent", "passwd", "dts")
    # make uninstall PURGE=1: everything else goes too
    box.run("make", "uninstall", "PURGE=1", cwd=SRC, timeout=180)
    for gone in ("/etc/dts", "/var/lib/dts", "/var/lib/dts-worker", "/var/log/dts"):
        assert box.run("test", "-e", gone, check=False).returncode != 0, gone
    assert box.run("getent", "passwd", "dts", check=False).returncode != 0
    assert box.run("getent", "group", "dts", check=False).returncode != 0
