"""Ray resource requests from a job's memory plan: plain arithmetic, no Ray import.

Ray places actors by logical resources and never looks at real memory use; the plan
supplies the numbers Ray's users usually guess:

- a CPU job asks for Ray's `memory` resource = planned + per-process overhead bytes,
  and `num_cpus` = the BLAS threads the caller's thread rule gave it;
- a GPU job asks for `num_gpus` = (planned + overhead) / the GPU's capacity, rounded
  UP to Ray's resolution (1/10000 of a GPU), so Ray puts two jobs on one GPU only
  while their plans fit it together (each fraction is at least its share of bytes).

A fraction only means bytes for one GPU size. On a cluster with mixed GPU models the
caller names the model the fraction was computed for (`accelerator_type`, a
resource Ray detects on every GPU node), and Ray then places the job only on that
model (docs/cluster.md).
"""

from __future__ import annotations

import math

from memtrain.errors import MemtrainError
from memtrain.units import format_bytes

# Ray stores fractional resources as fixed point with four decimal places.
GPU_RESOLUTION = 10_000
# a job reserving num_cpus CPUs runs its BLAS and its fused CPU kernels (numba) with that many threads
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


class NeverFits(MemtrainError):
    """The job's request exceeds every node of the cluster: Ray would queue it forever."""

    def __init__(self, message: str, largest_bytes: int | None = None):
        super().__init__(message)
        self.largest_bytes = largest_bytes


def gpu_fraction(total_bytes: int, capacity_bytes: int) -> float:
    """The smallest multiple of 1/10000 of a GPU that holds `total_bytes` of a GPU with
    `capacity_bytes` (exact integer ceiling, never rounded down)."""
    if capacity_bytes <= 0:
        raise ValueError(f"device capacity: expected a positive number of bytes, got {capacity_bytes!r}")
    if total_bytes < 0:
        raise ValueError(f"planned bytes: expected >= 0, got {total_bytes!r}")
    units = max(1, -(-total_bytes * GPU_RESOLUTION // capacity_bytes))
    if units > GPU_RESOLUTION:
        raise NeverFits(f"needs {format_bytes(total_bytes)} on one GPU; the GPU holds {format_bytes(capacity_bytes)}",
                        capacity_bytes)
    f = units / GPU_RESOLUTION
    if f * GPU_RESOLUTION < units:  # e.g. 0.5761 * 10000 == 5760.99...: Ray, truncating, would hold a unit less
        f = math.nextafter(f, math.inf)
    return f


def ray_options(resources, device: str, accelerator_type: str | None = None) -> dict:
    """The `.options(...)` of the actor that runs one job: `resources` is a
    memtrain.launch.executor.Resources, `device` the job's device ("cpu", "cuda:0")."""
    opts = {"num_cpus": max(1, int(resources.num_cpus))}
    if device.startswith("cuda"):
        if resources.device_capacity_bytes is None:
            raise ValueError("resources.device_capacity_bytes: a GPU job needs its GPU's capacity to become a "
                             "fraction of a GPU")
        opts["num_gpus"] = gpu_fraction(resources.total_bytes, resources.device_capacity_bytes)
        if accelerator_type:
            opts["accelerator_type"] = accelerator_type
    elif resources.total_bytes > 0:
        opts["memory"] = int(resources.total_bytes)
    return opts


def fits_node(opts: dict, node_resources: dict) -> bool:
    """Whether one node's total resources (ray.nodes()[i]["Resources"]) could ever hold
    a request built by ray_options (a fractional GPU request needs one whole GPU there)."""
    if node_resources.get("CPU", 0) < opts.get("num_cpus", 0):
        return False
    if node_resources.get("memory", 0) < opts.get("memory", 0):
        return False
    if opts.get("num_gpus", 0) > 0:
        if node_resources.get("GPU", 0) < 1:  # a fraction (<= 1) must fit one whole GPU of the node
            return False
        kind = opts.get("accelerator_type")
        if kind and node_resources.get(f"accelerator_type:{kind}", 0) <= 0:
            return False
    return True


def check_fits(opts: dict, nodes: list, what: str = "job") -> None:
    """Raise NeverFits (naming the largest node's memory) when no alive node in `nodes`
    (ray.nodes()) could ever run the request: Ray itself would leave it pending forever."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", n.get("alive", False))]
    if any(fits_node(opts, r) for r in alive):
        return
    if "memory" in opts:
        largest = max((int(r.get("memory", 0)) for r in alive), default=0)
        raise NeverFits(f"{what}: needs {format_bytes(opts['memory'])} of Ray memory and {opts['num_cpus']} CPU(s); "
                        f"the largest Ray node offers {format_bytes(largest)} and "
                        f"{max((r.get('CPU', 0) for r in alive), default=0):g} CPU(s)", largest)
    need = ", ".join(f"{k}={v}" for k, v in sorted(opts.items()))
    raise NeverFits(f"{what}: no Ray node offers {need}")
