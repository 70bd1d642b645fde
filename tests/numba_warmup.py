"""Fills numba's on-disk cache with memtrain's fused CPU kernels, in a process of its own.

conftest.py starts this in the background when a run includes tests/test_cpu_kernels.py: on a
fresh clone compiling every kernel (activations x optimizers x three dtypes) takes ~90 s of one
core, which the serial test process would otherwise spend itself, while the machine's second core
idles. The tests load what this wrote, the same machine code numba would compile for them; a
kernel the test process reaches first it compiles itself, as without this. Nothing is asserted
here: a kernel that fails to compile fails in the tests that call it.
"""

import fcntl
import os
import sys
import tempfile

from memtrain import MLP, Trainer
from memtrain.nn.activations import ACTIVATIONS
from memtrain.optim import OPTIMIZERS


def lock_numba_cache_writes() -> None:
    """numba saves a compiled kernel by reading its index, taking the first free data-file number
    and writing both: two processes saving two signatures of one kernel at the same moment could
    leave one's index entry naming the other's code. The warm-up and the test process (the two
    that compile side by side) take one file lock around each save."""
    from numba.core import caching  # noqa: PLC0415 - numba is loaded by then in both

    save = caching.IndexDataCacheFile.save
    if getattr(save, "locked", False):
        return
    path = os.path.join(tempfile.gettempdir(), f"memtrain-numba-save-{os.getuid()}.lock")

    def locked_save(self, key, data):
        with open(path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            save(self, key, data)

    locked_save.locked = True
    caching.IndexDataCacheFile.save = locked_save


def warm(dtype: str) -> None:
    """Every kernel of a step, for one dtype: each activation once, each optimizer once, the penalties."""
    builds = [({"activation": a}, "sgd") for a in ACTIVATIONS]
    builds += [({"activation": "relu"}, o if o != "lookahead" else "lookahead:adam") for o in OPTIMIZERS]
    builds.append(({"activation": "relu", "l1": 1e-3, "l2": 1e-3}, "sgd"))
    for model, optimizer in builds:
        try:
            Trainer(MLP([2, 2, 2], dtype=dtype, **model), optimizer, 2)  # builds the fused step: compiles
        except Exception as exc:  # noqa: BLE001 - the tests report it; the rest still warms
            print(f"warm-up {dtype} {model} {optimizer}: {exc}", file=sys.stderr)
    warm_rows(dtype)


def warm_rows(dtype: str) -> None:
    """A trial array's rows kernels (tests/test_trials.py, tests/test_trial_update.py): the l1/l2
    penalties', and each grouping optimizer's in float32, Adam's in the other dtypes."""
    from memtrain.kernels.cpu import dispatch  # noqa: PLC0415 - numba is loaded by then
    from memtrain.nn.spec import ModelSpec  # noqa: PLC0415
    from memtrain.optim import make_optimizer  # noqa: PLC0415

    try:
        dispatch.warm_penalty_rows(ModelSpec.create([2, 2], dtype=dtype))
    except Exception as exc:  # noqa: BLE001 - the tests report it
        print(f"warm-up penalty rows {dtype}: {exc}", file=sys.stderr)
    for name in OPTIMIZERS if dtype == "float32" else ["adam"]:
        opt = make_optimizer(name)
        if opt.rows_fusable:
            try:
                dispatch.warm_rows(opt, dtype)
            except Exception as exc:  # noqa: BLE001 - the tests report it
                print(f"warm-up rows {dtype} {name}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    lock_numba_cache_writes()
    os.nice(10)  # the test process comes first whenever both want a core
    for dt in ("float32", "float64", "float16"):  # the training tests' dtype first
        warm(dt)
