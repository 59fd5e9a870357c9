"""The server's duties: threads that move jobs on their own, each in a file of its own.

- enqueuer: submitted jobs to Redis right after their commit;
- promoter: delayed jobs and retries to their queue when their time comes;
- reaper: jobs of lost workers run again, ids taken from Redis but never claimed put back;
- reconciler: Redis refilled from the store after a restart, flush or outage;
- retainer: final jobs older than --retain deleted (on the lead, a batch at a time).
- ticker: the schedules' due times fired, each one job (on the lead server).

Each is a `Loop` (start, stop, wake) that calls into the coordinator, where the rules are
(the ticker into dts.server.schedules, the schedules' rules).
"""
