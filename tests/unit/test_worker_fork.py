"""A worker forks for jobs run as another user while its threads are in gRPC calls: the child
must reach its exec (gRPC's fork handlers, on by default, crashed it now and then)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

FORKS = 400
PROGRAM = f"""
import asyncio, subprocess, threading
import dts.worker.main  # what dts-worker imports first, before grpc
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

def serve(box, ready):
    async def main():
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        box.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        ready.set()
        await server.wait_for_termination()
    asyncio.run(main())

box, ready = [], threading.Event()
threading.Thread(target=serve, args=(box, ready), daemon=True).start()
ready.wait(10)
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{{box[0]}}"))
def calls():
    while True:
        stub.Check.future(health_pb2.HealthCheckRequest(), timeout=5).result()
for _ in range(3):
    threading.Thread(target=calls, daemon=True).start()
codes = []
for _ in range({FORKS}):
    p = subprocess.Popen(["true"], cwd="/tmp", user="nobody", start_new_session=True)
    codes.append(p.wait())
print(sorted(set(codes)))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root (CI is)")
def test_forks_while_grpc_calls_are_under_way_reach_their_exec() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[0]", done.stdout  # never -11 (SIGSEGV)
    assert "fork() handlers" not in done.stderr, done.stderr[-2000:]
