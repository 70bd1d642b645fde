"""Setting: what a memory plan depends on besides the batch size.

The job, the estimate, the auto batch and the profile build their plans from
one Setting, so they all count the same buffers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from memtrain.memory.plan import MemoryPlan, inference_plan, training_plan
from memtrain.optim import make_optimizer


@dataclass(frozen=True)
class Setting:
    """What a plan depends on besides the batch size."""

    spec: object  # ModelSpec
    optimizer: str = "adam"
    hyper: tuple = ()  # (("lr", 1e-3), ...)
    device: str = "cpu"  # "cpu" or "cuda"
    overhead_bytes: int = 0
    overhead_source: str = "none"
    inference: bool = False
    keep_best: bool = False
    resident_rows: tuple | None = None  # (n_train, n_val) of a data set kept in the plan (a job's)
    fused: bool = True  # CPU: the fused kernels' plan (no optimizer/activation scratch); False: NumPy's

    def make_optimizer(self):
        return make_optimizer(self.optimizer, **dict(self.hyper))

    def plan(self, batch_size: int, micro_batch_size: int | None = None) -> MemoryPlan:
        """The plan at `batch_size` (with `micro_batch_size` rows per pass when accumulating): the one
        place training_plan's arguments are built from a job's setting."""
        if self.inference:
            return inference_plan(self.spec, batch_size, self.device, overhead_bytes=self.overhead_bytes,
                                  overhead_source=self.overhead_source)
        micro = None if micro_batch_size is None else min(micro_batch_size, batch_size)
        return training_plan(self.spec, self.make_optimizer(), batch_size, self.device, keep_best=self.keep_best,
                             micro_batch_size=micro, resident_rows=self.resident_rows,
                             dataset_size=self.resident_rows[0] if self.resident_rows else None,
                             overhead_bytes=self.overhead_bytes,
                             overhead_source=self.overhead_source, fused=self.fused)

    def with_optimizer(self, name: str) -> "Setting":
        return dataclasses.replace(self, optimizer=name, hyper=self.hyper if name == self.optimizer else ())
