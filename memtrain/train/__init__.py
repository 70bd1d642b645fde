"""The training loop (jobs, checkpoints and metrics build on it)."""
