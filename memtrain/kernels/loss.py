"""Fused output bias + output unit + loss + its gradient, one block per row.

For row r: z_r <- z_r + b (the output layer's bias, kept in z), the loss of
the row is added to the device scalars (sc[SC_LOSS] for this step and
sc[SC_ACCUM] for the host's next read), and `out` receives dL/dz of the
batch-mean loss (already divided by the rows b), ready for backward. The
NumPy reference is memtrain/nn/losses.py (loss_sum, then delta).
"""

from __future__ import annotations

from memtrain.kernels.source import SC_ACCUM, SC_GRAD_SQ, SC_LOSS, Kernel, rowwise, single

_BIAS = """
S* zr = z + r * C;
S* orow = out + r * C;
"""
_ADD = f"""
if (threadIdx.x == 0) {{ atomicAdd(&sc[{SC_LOSS}], row_loss); atomicAdd(&sc[{SC_ACCUM}], row_loss); }}
"""

BODIES = {
    # log-sum-exp with the row max; dL/dz = p - onehot(y)
    "softmax": _BIAS + """
        const long long y_r = y[r];
        double mx = __longlong_as_double(0xfff0000000000000ULL);  // -inf
        for (long long j = threadIdx.x; j < C; j += blockDim.x) {
          zr[j] = st(ld(zr[j]) + ld(bias[j]));
          mx = fmax(mx, (double)ld(zr[j]));
        }
        const double m = block_max(mx, shared);
        double s = 0;
        for (long long j = threadIdx.x; j < C; j += blockDim.x) s += exp((double)ld(zr[j]) - m);
        const double total = block_sum(s, shared);
        for (long long j = threadIdx.x; j < C; j += blockDim.x) {
          const double pj = exp((double)ld(zr[j]) - m) / total;
          orow[j] = st((T)((pj - (j == y_r ? 1.0 : 0.0)) * inv_b));
        }
        const double row_loss = log(total) + m - (double)ld(zr[y_r]);""" + _ADD,
    # softplus(z) - y z; dL/dz = sigma(z) - y
    "sigmoid": _BIAS + """
        const S* yr = y + r * C;
        double acc = 0;
        for (long long j = threadIdx.x; j < C; j += blockDim.x) {
          zr[j] = st(ld(zr[j]) + ld(bias[j]));
          const T x = ld(zr[j]), yj = ld(yr[j]);
          acc += (double)softplus(x) - (double)yj * (double)x;
          orow[j] = st((T)(((double)sigm(x) - (double)yj) * inv_b));
        }
        const double row_loss = block_sum(acc, shared);""" + _ADD,
    # 1/2 ||z - y||^2; dL/dz = z - y
    "linear": _BIAS + """
        const S* yr = y + r * C;
        double acc = 0;
        for (long long j = threadIdx.x; j < C; j += blockDim.x) {
          zr[j] = st(ld(zr[j]) + ld(bias[j]));
          const double d = (double)ld(zr[j]) - (double)ld(yr[j]);
          acc += 0.5 * d * d;
          orow[j] = st((T)(d * inv_b));
        }
        const double row_loss = block_sum(acc, shared);""" + _ADD,
}


def kernel(name: str, dtype: str) -> Kernel:
    label = "const long long* __restrict__" if name == "softmax" else "const S* __restrict__"
    params = [("S* __restrict__", "z"), ("const S* __restrict__", "bias"), (label, "y"), ("S* __restrict__", "out"),
              ("const long long", "C"), ("const double", "inv_b"), ("double*", "sc")]
    return rowwise(f"loss_{name}", dtype, params, BODIES[name])


def step_begin() -> Kernel:
    """A new step: its loss starts at 0, and so does its squared gradient norm (the updates read
    both to skip a non-finite step). One kernel, on the float64 step scalars, for every dtype."""
    return single("step_begin", "float64", [("double*", "sc")], f"sc[{SC_LOSS}] = 0; sc[{SC_GRAD_SQ}] = 0;")


def all_kernels(dtype: str) -> list[Kernel]:
    return [kernel(name, dtype) for name in BODIES]
