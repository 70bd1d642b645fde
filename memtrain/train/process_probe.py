"""Measure a CPU job's process overhead: what its processes hold besides the plan.

`python -m memtrain.train.process_probe RUN_DIR` trains a tiny job as the service and
`memtrain train` run jobs (digits, so scikit-learn's loaders are loaded as in most jobs; the
fused numba kernels; the metrics exporter process) and, at the end of its last epoch,
counts the job's process and its exporter with memory/process.py: every private page
plus each shared mapping once. It prints one JSON object: bytes (that less the plan's
total), private, shared, planned. jobplan.process_overhead runs it once per machine and
Python and caches the figure.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from memtrain.config import JobConfig
from memtrain.memory.process import group_memory
from memtrain.train.job import Job


def probe_config(run_dir) -> dict:
    """The tiny job the overhead is measured with: metrics on, like every service job."""
    run_dir = Path(run_dir)
    return {"name": "overhead-probe", "seed": 0, "device": "cpu",
            "model": {"layers": [64, 8, 10]}, "optimizer": {"name": "sgd", "lr": 0.1},
            "training": {"batch_size": 16, "epochs": 2},
            "data": {"dataset": "digits"},
            "checkpoint": {"dir": str(run_dir / "checkpoints")}, "output": {"dir": str(run_dir / "output")},
            "metrics": {"port": 0, "host": "127.0.0.1"}}


class _ProbeJob(Job):
    measured = None

    def on_epoch(self, tr, record):
        super().on_epoch(tr, record)
        if tr.epoch == self.cfg.training.epochs:  # everything a step loads is loaded, the exporter runs
            pids = [os.getpid()] + ([self.exporter._proc.pid] if self.exporter is not None else [])
            self.measured = (group_memory(pids), self.plan.total)


def measure(run_dir) -> dict:
    cfg = JobConfig.from_dict(probe_config(run_dir))
    with open(os.devnull, "w") as sink:
        job = _ProbeJob(cfg, log_format="json", progress=False, stream=sink, install_signals=False)
        job.run()
    mem, planned = job.measured
    return {"bytes": mem.total - planned, "private": mem.private, "shared": mem.shared, "planned": planned}


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1])))
