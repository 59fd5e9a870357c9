"""Live output as data: chunks of a followed attempt's output at byte offsets, and how a
follower finishes an attempt from its stored output without a duplicate or a gap."""

from __future__ import annotations

import re
from dataclasses import dataclass

FOLLOW_TTL = 3.0  # seconds a follow's interest lasts unless renewed
LOGS_FOLLOW_TTL = 5.0  # seconds a GetLogs of a running job keeps it followed
FOLLOW_RENEW = 1.0  # seconds between renewals of a follow's interest
MAX_CHUNK = 64 * 1024  # bytes of one stream in one chunk; more is cut into several chunks

# what dts.worker.runner.Capture puts between the head and the tail of a truncated output
TRUNCATED = re.compile(rb"\n\[dts: output truncated, (\d+) bytes dropped\]\n")


@dataclass(frozen=True)
class Chunk:
    """The next bytes of an attempt's stdout and stderr, each at its byte offset in that
    stream as the job wrote it (before any truncation of the stored output)."""

    job_id: int
    attempt: int
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_offset: int = 0
    stderr_offset: int = 0


def split(chunk: Chunk, limit: int = MAX_CHUNK) -> list[Chunk]:
    """`chunk` as chunks of at most `limit` bytes per stream."""
    if len(chunk.stdout) <= limit and len(chunk.stderr) <= limit:
        return [chunk]
    parts = []
    out, err = chunk.stdout, chunk.stderr
    oo, eo = chunk.stdout_offset, chunk.stderr_offset
    while out or err:
        a, b = out[:limit], err[:limit]
        parts.append(Chunk(chunk.job_id, chunk.attempt, a, b, oo, eo))
        out, err, oo, eo = out[limit:], err[limit:], oo + len(a), eo + len(b)
    return parts


def marker(dropped: int) -> bytes:
    """What stands for `dropped` bytes left out of an output (the stored one, or a follow)."""
    return f"\n[dts: output truncated, {dropped} bytes dropped]\n".encode()


def fresh(data: bytes, offset: int, have: int) -> tuple[bytes, int]:
    """What of `data` (at `offset`) follows the `have` bytes a follower has, and the count
    it will have after it. Bytes it has are dropped; a gap (bytes it never got: the middle
    a capped output drops) becomes the marker the stored output has in its place."""
    end = offset + len(data)
    if end <= have or not data:
        return b"", have
    if offset > have:
        return marker(offset - have) + data, end
    return data[have - offset :], end


def rest(stored: bytes, have: int) -> bytes:
    """What of an attempt's stored output comes after the `have` bytes of the stream a
    follower got live. A truncated output (head, marker, tail) maps back to the stream's
    offsets: what the follower got of the dropped middle is not repeated."""
    m = TRUNCATED.search(stored)
    if m is None:
        return stored[have:]
    head, tail = stored[: m.start()], stored[m.end() :]
    tail_at = len(head) + int(m.group(1))
    if have < len(head):
        return stored[have:]
    if have < tail_at:
        return stored[m.start() :]  # the marker says what the follower did not get
    return tail[have - tail_at :]


def joined(chunks: list[Chunk]) -> tuple[bytes, bytes]:
    """An attempt's output so far from its chunks (duplicates dropped, in offset order); a
    stream whose first bytes are missing starts with a note of how many."""
    out, err = bytearray(), bytearray()
    have_out = have_err = 0
    for c in chunks:
        for data, offset, buf, stream in (
            (c.stdout, c.stdout_offset, out, 0),
            (c.stderr, c.stderr_offset, err, 1),
        ):
            have = have_out if stream == 0 else have_err
            piece, have = fresh(data, offset, have)
            buf += piece
            if stream == 0:
                have_out = have
            else:
                have_err = have
    return bytes(out), bytes(err)
