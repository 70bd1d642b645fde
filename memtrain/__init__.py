"""memtrain: train feedforward networks and know their memory before allocating it.

Importing this package loads nothing: the public names below are imported on
first use (PEP 562), so `memtrain --help` does not load the trainer. CuPy is
imported when a CUDA device is asked for; click and prometheus_client only by
the CLI and the metrics exporter.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "get_backend": "memtrain.backend",
    "Buffer": "memtrain.memory.plan",
    "MemoryPlan": "memtrain.memory.plan",
    "inference_plan": "memtrain.memory.plan",
    "training_plan": "memtrain.memory.plan",
    "MLP": "memtrain.nn.mlp",
    "ModelSpec": "memtrain.nn.spec",
    "OPTIMIZERS": "memtrain.optim",
    "make_optimizer": "memtrain.optim",
    "make_schedule": "memtrain.optim.schedules",
    "Trainer": "memtrain.train.trainer",
    "JobConfig": "memtrain.config",
    "Job": "memtrain.train.job",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # the next look-up is a plain attribute
        return value
    raise AttributeError(f"module 'memtrain' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
