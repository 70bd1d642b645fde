"""The one scheduler the service, `memtrain sweep` and `memtrain compare` share: the job store
(SQLite, typed rows), admission by plan (a pure function), and the Scheduler with its two
strategies (this scheduler packs, or an executor that places by itself is handed every job).
What a job's launch looks like is its caller's: the service's PlannedJobs (service/planned_jobs.py),
the sweep's TaskJobs (select/runner.py)."""
