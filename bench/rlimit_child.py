"""Child process for tests/test_autobatch.py and bench/autobatch_vs_doubling.py: one
real training step (or autobatch) under a hard address-space cap (RLIMIT_AS).

    python rlimit_child.py trial B CAP     -> "fits" or "oom": one real step at batch B
    python rlimit_child.py auto CAP        -> autobatch's result as JSON

The cap is CAP bytes above the process's address space after imports and a
warm-up step, so every child starts from the same baseline. Its callers fix the
thread counts (BLAS, OpenMP, numba) and glibc's arenas and mmap threshold, so the
baseline does not depend on the machine's core count.
"""

import gc
import json
import resource
import sys

from memtrain import MLP, Trainer
from memtrain.backend import get_backend
from memtrain.memory.measure import proc_kib
from memtrain.nn.spec import ModelSpec
from memtrain.profiler.autobatch import auto_batch
from memtrain.profiler.estimate import Setting
from memtrain.profiler.verify import random_fill

SPEC = ModelSpec.create([784, 512, 256, 10])
OPTIMIZER = "adam"


def vm_size() -> int:
    return proc_kib("/proc/self/status", "VmSize")


def one_step(batch: int) -> None:
    """A real step, its random batch written straight into the plan's buffers (as the probe does)."""
    Trainer(MLP.from_spec(SPEC), OPTIMIZER, batch)._step(batch, random_fill(SPEC, 0))


def main() -> None:
    mode = sys.argv[1]
    one_step(64)  # warm-up: libraries, BLAS buffers, first-call caches
    # no garbage left from the warm-up and no collection during the step: memory that a collection
    # would unmap mid-step is room the cap did not mean to give (the baseline is taken once, here)
    gc.collect()
    gc.disable()
    cap = int(sys.argv[-1])
    resource.setrlimit(resource.RLIMIT_AS, (vm_size() + cap, resource.RLIM_INFINITY))
    if mode == "trial":
        try:
            one_step(int(sys.argv[2]))
            print("fits")
        except MemoryError:
            print("oom")
    else:
        r = auto_batch(Setting(SPEC, OPTIMIZER), get_backend("cpu"), memory_limit=cap)
        print(json.dumps(r.to_dict()))


if __name__ == "__main__":
    main()
