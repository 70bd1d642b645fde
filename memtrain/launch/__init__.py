"""Launching jobs: where a planned job's process runs (this machine or a Ray cluster).

Both `memtrain serve` and `memtrain sweep` hand a `Launch` to an `Executor`; the
executor starts the same worker (`python -m memtrain.launch.worker`), so a job
behaves the same whoever placed it.
"""
