"""dts-worker: takes job ids from Redis, claims and reports them to the server, and runs each
job as a contained process (sandbox, limits, cgroup, guard)."""
