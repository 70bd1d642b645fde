"""Fused bias + activation forward and activation backward, one launch each.

Forward (hidden layer i): z <- z + b (z kept for backward), out <- g(z).
Backward: z <- grad * g'(z) (the layer's delta), with a = g(z) from the
forward pass where the derivative is cheaper through it; the contract is the
one of memtrain/nn/activations.py (the NumPy reference), PReLU included: its
a is overwritten with grad * min(0, z), whose column sums are dL/dalpha.
"""

from __future__ import annotations

from memtrain.kernels.source import Kernel, elementwise, prelude

# name -> (g(x), g'(x) given a = g(x)); `c` is the fixed parameter (leaky
# slope, swish beta), `al` PReLU's learned per-unit alpha.
FORMULAS = {
    "identity": ("x", "(T)1"),
    "sigmoid": ("sigm(x)", "a * ((T)1 - a)"),
    "tanh": ("tanh(x)", "(T)1 - a * a"),
    "relu": ("fmax(x, (T)0)", "(T)(x > (T)0)"),
    "leaky_relu": ("x > (T)0 ? x : (T)c * x", "x > (T)0 ? (T)1 : (T)c"),
    "abs": ("x > (T)0 ? x : (T)c * x", "x > (T)0 ? (T)1 : (T)c"),
    "prelu": ("fmax(x, (T)0) + al * fmin(x, (T)0)", "x > (T)0 ? (T)1 : al"),
    # g' = s + beta*a*(1 - s), s = sigma(beta z)
    "swish": ("x * sigm((T)c * x)", "sigm((T)c * x) + (T)c * a * ((T)1 - sigm((T)c * x))"),
    # g' = t + z sigma(z) (1 - t^2), t = tanh(softplus(z))
    "mish": ("x * tanh(softplus(x))", "tanh(softplus(x)) + x * sigm(x) * ((T)1 - tanh(softplus(x)) * tanh(softplus(x)))"),
    # exact GELU: Phi(z) = (1 + erf(z/sqrt 2))/2; g' = Phi(z) + z phi(z)
    "gelu": ("x * (T)0.5 * ((T)1 + erf(x * (T)0.70710678118654752))",
             "(T)0.5 * ((T)1 + erf(x * (T)0.70710678118654752)) + x * exp((T)-0.5 * x * x) * (T)0.39894228040143268"),
    "softplus": ("softplus(x)", "sigm(x)"),
}


def _alpha(name):
    return [("const S* __restrict__", "alpha")] if name == "prelu" else []


def forward(name: str, dtype: str) -> Kernel:
    params = [("S* __restrict__", "z"), ("const S* __restrict__", "bias")] + _alpha(name) + [
        ("S* __restrict__", "out"), ("const long long", "k"), ("const double", "c")]
    al = "const T al = ld(alpha[i % k]);\n" if name == "prelu" else ""
    body = f"""
        const S zs = st(ld(z[i]) + ld(bias[i % k]));
        z[i] = zs;
        const T x = ld(zs);
        {al}out[i] = st({FORMULAS[name][0]});"""
    return elementwise(f"act_{name}_fwd", dtype, params, body)


def backward(name: str, dtype: str) -> Kernel:
    params = [("S* __restrict__", "z"), ("S* __restrict__", "a_buf"), ("const S* __restrict__", "grad")] + _alpha(name) + [
        ("const long long", "k"), ("const double", "c")]
    extra = ""
    if name == "prelu":
        # a is free now (the next layer's weight gradient has used it): grad * min(0, z) for dL/dalpha
        extra = "const T al = ld(alpha[i % k]);\na_buf[i] = st(gr * fmin(x, (T)0));\n"
    body = f"""
        const T x = ld(z[i]);
        const T a = ld(a_buf[i]);
        const T gr = ld(grad[i]);
        {extra}z[i] = st(gr * ({FORMULAS[name][1]}));"""
    return elementwise(f"act_{name}_bwd", dtype, params, body)


COLUMN_TILE = (32, 8)  # columns x row lanes per block of the column sum


def column_sum(dtype: str) -> Kernel:
    """out[j] = sum over the rows of x[:, j] (the bias gradient, PReLU's dL/dalpha),
    summed in double. A block takes 32 neighbouring columns (a warp reads 128
    contiguous bytes of a row) and 8 row lanes, which shared memory then adds
    up: 8x the threads of one-thread-per-column, no atomics. A kernel of its own
    rather than CuPy's reduction, which may take a temporary from the pool (not
    in the plan, not capturable). Launched with ceil(k/32) blocks of 256 threads."""
    cols, lanes = COLUMN_TILE
    full = f"memtrain_column_sum_{dtype}"
    src = (prelude(dtype)
           + f'extern "C" __global__ void {full}(const long long k, const S* __restrict__ x, const long long rows, '
             "S* __restrict__ out) {\n"
           + f"  __shared__ double part[{lanes}][{cols}];\n"
           + f"  const int tx = threadIdx.x % {cols}, ty = threadIdx.x / {cols};\n"
           + f"  const long long j = (long long)blockIdx.x * {cols} + tx;\n"
           + "  double acc = 0;\n"
           + f"  if (j < k) for (long long r = ty; r < rows; r += {lanes}) acc += (double)ld(x[r * k + j]);\n"
           + "  part[ty][tx] = acc;\n  __syncthreads();\n"
           + "  if (ty == 0 && j < k) {\n"
           + f"    for (int l = 1; l < {lanes}; ++l) acc += part[l][tx];\n"
           + "    out[j] = st((T)acc);\n  }\n}\n")
    return Kernel(full, src, dtype)


def fixed_parameter(act) -> float:
    """The `c` of FORMULAS for an Activation instance (0 where it has none)."""
    if act.name in ("leaky_relu", "abs"):
        return act.alpha
    if act.name == "swish":
        return act.beta
    return 0.0


def all_kernels(dtype: str) -> list[Kernel]:
    return [f(name, dtype) for name in FORMULAS for f in (forward, backward)] + [column_sum(dtype)]
