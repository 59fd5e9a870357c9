"""Live output chunks <-> protobuf."""

from __future__ import annotations

from dts.live import Chunk
from dts.v1 import dts_pb2 as pb


def chunk_to_pb(c: Chunk) -> pb.OutputChunk:
    return pb.OutputChunk(
        job_id=c.job_id,
        attempt=c.attempt,
        stdout=c.stdout,
        stderr=c.stderr,
        stdout_offset=c.stdout_offset,
        stderr_offset=c.stderr_offset,
    )


def chunk_from_pb(m: pb.OutputChunk) -> Chunk:
    return Chunk(m.job_id, m.attempt, m.stdout, m.stderr, m.stdout_offset, m.stderr_offset)
