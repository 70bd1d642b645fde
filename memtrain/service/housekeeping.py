"""What the service does once a round (every `Settings.housekeeping_seconds`), besides scheduling:

- the rolling backup of the job store (recovery.backup), when it has changed;
- checkpoint retention: a succeeded job's checkpoints are removed once it ended more than
  `keep_checkpoints_hours` ago or is not among the newest `keep_checkpoints` succeeded jobs.
  Its model, history, log and exit record stay. Cancelled and failed jobs keep theirs: a
  requeue resumes from them;
- the state dir's size (allocated bytes, as `du` counts them), for the status page and /metrics.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

from memtrain.scheduling.store import now
from memtrain.service import recovery

log = logging.getLogger("memtrain.service")


class Housekeeper:
    def __init__(self, store, settings):
        self.store, self.settings = store, settings
        self.state_dir_bytes = None  # measured each round
        self._backed_up = None
        self._swept: set = set()  # jobs whose checkpoints are gone already
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memtrain-housekeeping", daemon=True)

    def start(self) -> None:
        self.round()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        self._backed_up = recovery.backup(self.store, self.settings.state_dir / recovery.BACKUP, self._backed_up)

    def round(self) -> None:
        s = self.settings
        self._backed_up = recovery.backup(self.store, s.state_dir / recovery.BACKUP, self._backed_up)
        try:
            for job_id in expired(self.store.list("succeeded"), s.keep_checkpoints, s.keep_checkpoints_hours * 3600):
                if job_id not in self._swept:
                    self._remove_checkpoints(job_id)
        except Exception:  # logged with its traceback; the next round tries again
            log.exception("checkpoint retention failed")
        self.state_dir_bytes = sum(du(p) for p in dict.fromkeys((s.state_dir, s.storage)))

    def _remove_checkpoints(self, job_id: str) -> None:
        job = self.store.get(job_id)
        ckpts = Path(job.run_dir) / "checkpoints"
        if ckpts.is_dir():
            freed = du(ckpts)
            shutil.rmtree(ckpts)
            log.info("job %s: removed its checkpoints (%d bytes; retention)", job_id, freed)
        self._swept.add(job_id)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.housekeeping_seconds):
            try:
                self.round()
            except Exception:  # a bug must not end housekeeping silently
                log.exception("housekeeping failed")


def expired(succeeded: list, keep: int, keep_seconds: float) -> list:
    """Ids of the succeeded jobs whose checkpoints go: beyond the newest `keep` (by end time) or
    ended more than `keep_seconds` ago."""
    ordered = sorted(succeeded, key=lambda j: j.ended_at or 0, reverse=True)
    t = now()
    return [j.id for i, j in enumerate(ordered) if i >= keep or t - (j.ended_at or t) > keep_seconds]


def du(path) -> int:
    """Bytes allocated on disk under `path` (files counted once, links not followed)."""
    total = 0
    for here, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                total += os.lstat(os.path.join(here, name)).st_blocks * 512
            except OSError:  # removed meanwhile
                pass
    try:
        total += os.lstat(path).st_blocks * 512
    except OSError:
        pass
    return total
