"""The process every executor starts: `python -m memtrain.launch.worker LAUNCH.json`.

It runs one job from its JSON config (the same Job `memtrain train` runs), logging
JSON lines to stdout (the executor points stdout/stderr at the job's log file).
Exit status: 0 finished or stopped on SIGTERM/SIGINT after a checkpoint, 1 the job
failed, 2 a bad config (never retried).
"""

from __future__ import annotations

import json
import sys

from memtrain.errors import ExitCode, MemtrainError


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m memtrain.launch.worker LAUNCH.json", file=sys.stderr)
        return ExitCode.USAGE
    from memtrain.config import JobConfig  # noqa: PLC0415 - a usage error answers before the trainer loads
    from memtrain.errors import JobFailed  # noqa: PLC0415 - a usage error answers before the trainer loads
    from memtrain.profiler.autobatch import auto_batch  # noqa: PLC0415 - a usage error answers before the trainer loads
    from memtrain.train.job import Job  # noqa: PLC0415 - a usage error answers before the trainer loads

    try:
        with open(argv[0]) as f:
            launch = json.load(f)
        cfg = JobConfig.from_dict(launch["config"], source=launch.get("job_id", argv[0]))
        Job(cfg, log_format="json", progress=False, batch_solver=auto_batch).run()
    except JobFailed as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return ExitCode.FAILURE
    except (MemtrainError, OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return ExitCode.USAGE
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
