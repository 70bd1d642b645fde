"""The probe job's processes (train/process_probe.py) in three views at the end of its last
epoch: RSS summed, PSS summed, and what memtrain counts (private pages plus each shared mapping
once, memory/process.py). docs/memory-model.md says why the last.

    python bench/process_overhead_views.py
"""

import json
import os
import tempfile

from memtrain.config import JobConfig
from memtrain.memory.process import group_memory
from memtrain.train import process_probe


def rollup(pid) -> dict:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                out[key] = int(value.split()[0]) * 1024
    return out


class ViewsJob(process_probe._ProbeJob):
    views = None

    def on_epoch(self, tr, record):
        super().on_epoch(tr, record)
        if tr.epoch == self.cfg.training.epochs:
            pids = [os.getpid(), self.exporter._proc.pid]
            r = [rollup(p) for p in pids]
            g = group_memory(pids)
            self.views = {"rss_sum": sum(x["Rss"] for x in r), "pss_sum": sum(x["Pss"] for x in r),
                          "counted": g.total, "private": g.private, "shared_once": g.shared,
                          "planned": self.plan.total, "rss": [x["Rss"] for x in r]}


if __name__ == "__main__":  # the exporter is a spawned process: it imports this module again
    with tempfile.TemporaryDirectory() as d, open(os.devnull, "w") as sink:
        job = ViewsJob(JobConfig.from_dict(process_probe.probe_config(d)), log_format="json", progress=False,
                       stream=sink, install_signals=False)
        job.run()
    print(json.dumps({k: (v if isinstance(v, list) else f"{v / 1024**2:.1f} MiB") for k, v in job.views.items()}))
