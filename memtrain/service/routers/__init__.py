"""The HTTP API's routes, one router per concern: `jobs` (submit, list, view, cancel, requeue,
logs, a job's page) and `status` (health, devices, Prometheus targets and metrics, the status
page). `deps` holds what they share: the Service and the caller's user, injected by `Depends`,
and the cached answers (view_cache) with their ETags."""
