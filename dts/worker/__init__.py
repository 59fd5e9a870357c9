"""dts-worker: takes job ids from Redis, claims and reports them to the server, and runs each
job as a contained process (sandbox, limits, cgroup, guard)."""

import os

# A job run as another user starts with fork() (subprocess: posix_spawn cannot switch users),
# while the worker's threads are in gRPC calls. gRPC's fork handlers then crashed the child
# now and then, before its exec (SIGSEGV: 3% of such forks in a test loop), and logged a line
# for each fork. The child execs at once and uses no gRPC: the worker turns them off, before
# anything imports grpc (it reads this when imported).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
