#!/usr/bin/env python3
"""CPU per uncached GET /jobs page inside the service, without HTTP: `Service.jobs_page` with a new
cursor per call (so no page cache answers), over a state dir that bench/service_load.py left
(/tmp/service-load-*/s, 1,000 stored jobs), then cProfile's top entries.

    .venv/bin/python bench/page_cpu.py /tmp/service-load-XXXX/s [--pages 300]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

from memtrain.service.core import Service, Settings
from memtrain.service.routers.deps import as_json
from memtrain.service.routers.jobs import JOB


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("state_dir", type=Path)
    ap.add_argument("--pages", type=int, default=300)
    a = ap.parse_args(argv)
    s = Service(Settings(state_dir=a.state_dir, devices="cpu", budgets={"cpu": 3 * 2**30}, cpu_overhead=0,
                         metrics_ports=False))
    try:
        def serialize(view):
            return as_json(JOB, view)

        nxt = s.jobs_page(None, 100, None, serialize=serialize)[1]
        top = (nxt or 0) + 101

        def pages():
            for i in range(a.pages):
                s.jobs_page(None, 100, top - (i % 50), serialize=serialize)

        pages()  # the views and progress files cached, as in a running service
        t = time.process_time()
        pages()
        print(f"{(time.process_time() - t) / a.pages * 1000:.2f} ms of CPU per page")
        prof = cProfile.Profile()
        prof.runcall(pages)
        pstats.Stats(prof).sort_stats("tottime").print_stats(10)
    finally:
        s.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
