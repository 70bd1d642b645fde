"""Optimizer state as declared slots, and the chunk size of flat-array updates.

Optimizers (memtrain/optim/) declare their state as Slots; the plan counts the
same declaration (plan.py) and the arena allocates it, so this module sits below
both and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

# Flat-array updates (optimizer, regularisation) run over chunks of this many
# elements with a bounded scratch, instead of P-sized temporaries. 64 Ki
# elements keeps a float32 chunk (256 KiB) inside a core's L2 cache.
CHUNK = 65536


@dataclass(frozen=True)
class Slot:
    name: str
    kind: str  # "param", "per_layer" or "scalar"
    dtype: str | None = None  # None: the parameters' dtype
    init: float = 0.0
    doc: str = ""


def slot_shape(slot: Slot, n_params: int, n_groups: int) -> tuple:
    """The one place a slot's kind becomes a shape (the plan and `standalone_state` use it)."""
    return {"param": (n_params,), "per_layer": (n_groups,), "scalar": ()}[slot.kind]
