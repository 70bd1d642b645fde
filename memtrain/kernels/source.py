"""CUDA source text for memtrain's kernels, generated per dtype (no CuPy needed).

Every kernel memtrain launches on a GPU is a `Kernel`: a name and the complete
CUDA C++ source handed to `cupy.RawKernel` (compile.py). Because the text is
produced here, CI compiles every kernel with NVRTC on a machine without a GPU
(tests/test_kernels_compile.py), so a syntax error never waits for GPU time.

Storage and compute types per dtype (Chainer-style: one source per dtype):
- float64: stored and computed in double
- float32: stored and computed in float
- float16: stored as 16-bit words, computed in float; converted with the PTX
  `cvt` instructions cuda_fp16.h itself uses, so the source needs no header
  and NVRTC needs no include path.
"""

from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("float16", "float32", "float64")
_STORAGE = {"float16": "unsigned short", "float32": "float", "float64": "double"}
_COMPUTE = {"float16": "float", "float32": "float", "float64": "double"}
BLOCK = 256  # threads per block of the element-wise kernels
ROW_BLOCK = 128  # threads per block (one block per row) of the row kernels

# Indices into the step-scalars array (float64, on the device), which the
# kernels read so that a captured CUDA graph sees this step's values.
SC_LR = 0  # learning rate of this step (written by the host before the step)
SC_LOSS = 1  # this step's summed loss (the loss kernel adds to it; 0 at the step's start)
SC_LOSS_SCALE = 2  # loss scale (1: reserved for mixed precision)
SC_ACCUM = 3  # losses summed since the host last read them (read every N steps)
SC_GRAD_SQ = 4  # ||g||^2 of this step in graph mode (0 at the step's start)
SC_CLIP = 5  # clip_norm in graph mode (0: no clipping)
SC_EAGER_NORM = 6  # ||g||^2 of a float16 gradient for the eager step's host-side clipping; 7 spare
N_SCALARS = 8
# The update kernels skip a step whose loss or gradient is not finite (as the CPU path does on the host).
STEP_FINITE = f"isfinite(sc[{SC_LOSS}]) && isfinite(sc[{SC_GRAD_SQ}])"


@dataclass(frozen=True)
class Kernel:
    """One kernel: its entry-point name and full source."""

    name: str
    source: str
    dtype: str


# The gradient clip factor, max_norm / ||g|| when the norm is longer (course: exploding
# gradients); 1 when sc[SC_CLIP] is 0 or ||g||^2 was not computed on the device (eager mode
# clips on the host).
CLIP_SCALE = (f"__device__ __forceinline__ double clip_scale(const double* sc) {{ "
              f"return (sc[{SC_CLIP}] > 0 && sc[{SC_GRAD_SQ}] > sc[{SC_CLIP}] * sc[{SC_CLIP}]) ? "
              f"sc[{SC_CLIP}] / sqrt(sc[{SC_GRAD_SQ}]) : 1.0; }}\n")


def prelude(dtype: str) -> str:
    """S: storage type, T: compute type, ld/st convert between them."""
    s, t = _STORAGE[dtype], _COMPUTE[dtype]
    if dtype == "float16":
        conv = (
            "#ifdef MEMTRAIN_HOST  // the C++ host build that checks the kernels on a CPU (kernels/host.py)\n"
            "inline T ld(const S h) { _Float16 f; memcpy(&f, &h, 2); return (float)f; }\n"
            "inline S st(const T x) { _Float16 f = (_Float16)x; S h; memcpy(&h, &f, 2); return h; }\n"
            "#else\n"
            "__device__ __forceinline__ T ld(const S h) { float f; asm(\"{cvt.f32.f16 %0, %1;}\" : \"=f\"(f) : \"h\"(h)); return f; }\n"
            "__device__ __forceinline__ S st(const T f) { S h; asm(\"{cvt.rn.f16.f32 %0, %1;}\" : \"=h\"(h) : \"f\"(f)); return h; }\n"
            "#endif\n"
        )
    else:
        conv = ("__device__ __forceinline__ T ld(const S x) { return x; }\n"
                "__device__ __forceinline__ S st(const T x) { return x; }\n")
    return (f"// memtrain generated kernel, dtype {dtype}\n"
            f"typedef {s} S;\ntypedef {t} T;\n{conv}"
            "__device__ __forceinline__ T sigm(const T x) { return (T)0.5 + (T)0.5 * tanh((T)0.5 * x); }\n"
            "__device__ __forceinline__ T softplus(const T x) { return fmax(x, (T)0) + log1p(exp(-fabs(x))); }\n"
            + CLIP_SCALE)


def _params(params) -> str:
    return ", ".join(f"{ctype} {name}" for ctype, name in params)


def elementwise(name: str, dtype: str, params, body: str, prologue: str = "") -> Kernel:
    """A grid-stride loop over i in [0, n): `body` runs once per element.

    `params` are (C type, name) pairs after the leading `const long long n`;
    `prologue` runs once per thread before the loop (per-step scalars read
    from the device arrays, so they are computed once, not per element)."""
    full = f"memtrain_{name}_{dtype}"
    src = (prelude(dtype)
           + f'extern "C" __global__ void {full}(const long long n, {_params(params)}) {{\n'
           + _indent(prologue)
           + "  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;"
             " i += (long long)blockDim.x * gridDim.x) {\n"
           + _indent(body, 4)
           + "  }\n}\n")
    return Kernel(full, src, dtype)


def elementwise_rows(name: str, dtype: str, params, body: str, prologue: str = "") -> Kernel:
    """`elementwise`'s kernel over rows of a trial array's stacked arrays, one launch for several
    trials (train/trial_update.py): blockIdx.y is the j-th updated trial, and every element runs
    the same prologue and body as in the flat kernel, so it gets the same arithmetic.

    After n (the row length): `trials` (gridDim.y), idx (a long long matrix: idx[a * trials + j]
    is the row of the a-th array parameter that trial j owns; its last row is the trial's column
    of hp) and hp (the per-trial scalars, double, hp[s * hp_n + column], uploaded once per group).
    Each array parameter is followed by its row stride in elements (`<name>_rs`); the scalar
    parameters are not arguments but read from hp into the names the body uses."""
    arrays = [(c, n) for c, n in params if "*" in c]
    scalars = [(c, n) for c, n in params if "*" not in c]
    sig = [("const long long", "trials"), ("const long long* __restrict__", "idx"),
           ("const double* __restrict__", "hp"), ("const long long", "hp_n")]
    for c, n in arrays:
        sig += [(c, n), ("const long long", f"{n}_rs")]
    rows = "const long long j = blockIdx.y;\n" + "".join(
        f"{n} += idx[{a} * trials + j] * {n}_rs;\n" for a, (_, n) in enumerate(arrays))
    rows += f"const long long column = idx[{len(arrays)} * trials + j];\n" + "".join(
        f"{c} {n} = hp[{s} * hp_n + column];\n" for s, (c, n) in enumerate(scalars))
    full = f"memtrain_{name}_rows_{dtype}"
    src = (prelude(dtype)
           + f'extern "C" __global__ void {full}(const long long n, {_params(sig)}) {{\n'
           + _indent(rows + prologue)
           + "  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;"
             " i += (long long)blockDim.x * gridDim.x) {\n"
           + _indent(body, 4)
           + "  }\n}\n")
    return Kernel(full, src, dtype)


# Sum of one double per thread over a block (ROW_BLOCK threads); every thread gets the total.
BLOCK_SUM = """
#ifdef MEMTRAIN_HOST  // the host build runs one thread per block: its value is the block's
__device__ __forceinline__ double block_sum(double x, double* shared) { return x; }
__device__ __forceinline__ double block_max(double x, double* shared) { return x; }
#else
__device__ __forceinline__ double block_sum(double x, double* shared) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  double total = 0;
  for (int w = 0; w < (int)(blockDim.x + 31) / 32; ++w) total += shared[w];
  return total;
}
__device__ __forceinline__ double block_max(double x, double* shared) {
  for (int o = 16; o > 0; o >>= 1) x = fmax(x, __shfl_down_sync(0xffffffffu, x, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  double m = shared[0];
  for (int w = 1; w < (int)(blockDim.x + 31) / 32; ++w) m = fmax(m, shared[w]);
  return m;
}
#endif
"""


def rowwise(name: str, dtype: str, params, body: str) -> Kernel:
    """One block of ROW_BLOCK threads per row r in [0, rows); `body` sees r,
    `shared` (32 doubles) and block_sum/block_max."""
    full = f"memtrain_{name}_{dtype}"
    src = (prelude(dtype) + BLOCK_SUM
           + f'extern "C" __global__ void {full}(const long long rows, {_params(params)}) {{\n'
           + "  __shared__ double shared[32];\n"
           + "  const long long r = blockIdx.x;\n  if (r >= rows) return;\n"
           + _indent(body)
           + "}\n")
    return Kernel(full, src, dtype)


def single(name: str, dtype: str, params, body: str) -> Kernel:
    """A one-thread kernel (step counters): launched as <<<1, 1>>>."""
    full = f"memtrain_{name}_{dtype}"
    src = (prelude(dtype)
           + f'extern "C" __global__ void {full}({_params(params)}) {{\n'
           + "  if (blockIdx.x != 0 || threadIdx.x != 0) return;\n"
           + _indent(body) + "}\n")
    return Kernel(full, src, dtype)


def _indent(text: str, n: int = 2) -> str:
    lines = [ln for ln in text.strip("\n").splitlines()]
    return "".join(" " * n + ln.strip() + "\n" for ln in lines if ln.strip())
