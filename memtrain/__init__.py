"""memtrain: train feedforward networks and know their memory before allocating it.

Importing this package stays light: NumPy only. CuPy is imported when a CUDA
device is asked for; click and prometheus_client only by the CLI and the
metrics exporter.
"""

__version__ = "0.1.0"

from memtrain.backend import get_backend
from memtrain.memory.plan import Buffer, MemoryPlan, inference_plan, training_plan
from memtrain.nn.mlp import MLP, ModelSpec
from memtrain.optim import OPTIMIZERS, make_optimizer
from memtrain.optim.schedules import make_schedule
from memtrain.train.trainer import Trainer

__all__ = [
    "__version__",
    "Buffer",
    "MemoryPlan",
    "MLP",
    "ModelSpec",
    "OPTIMIZERS",
    "Trainer",
    "get_backend",
    "inference_plan",
    "make_optimizer",
    "make_schedule",
    "training_plan",
]
