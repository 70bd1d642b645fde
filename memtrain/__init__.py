"""memtrain: train feedforward networks and know their memory before allocating it.

Importing this package loads nothing: the public names below are imported on
first use (PEP 562), so `memtrain --help` does not load the trainer. CuPy is
imported when a CUDA device is asked for; click and prometheus_client only by
the CLI and the metrics exporter.
"""

from memtrain.lazy import lazy_attributes

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
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
