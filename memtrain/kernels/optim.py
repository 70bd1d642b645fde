"""One fused kernel per optimizer update over the whole flat parameter vector.

Each element is read and written once, so the GPU plan has no optimizer
workspace (memory/plan.py). The CPU runs the same updates as numba kernels
(kernels/cpu/optim.py, one function per optimizer, the same slot order); the
NumPy reference (memtrain/optim/*.py) runs them in 64Ki-element chunks with a
scratch.

Every update takes its arrays (p, g, then the state slots Optimizer.kernel_args
names, in that order), the step's scalars on the device (`sc`, see source.SC_*)
and then its own scalars. From `sc` it reads the learning rate the host wrote
for this step, and the step's loss, so that an update whose loss is not finite is skipped on the device
(the CPU path skips it on the host). Step counters (`opt.count`,
`opt.la_count`) live on the device too and are advanced by `tick`, so Adam's
bias corrections 1/(1 - beta^t) are computed on the device, once per thread.
"""

from __future__ import annotations

from memtrain.kernels.source import (
    BLOCK_SUM,
    SC_GRAD_SQ,
    STEP_FINITE,
    Kernel,
    elementwise,
    elementwise_rows,
    prelude,
    rowwise,
    single,
)

SC = ("const double* __restrict__", "sc")
P = ("S* __restrict__", "p")
G = ("const S* __restrict__", "g")
COUNT = ("const long long* __restrict__", "count")
SKIP = f"if (!({STEP_FINITE})) return;  // a non-finite loss or gradient: no update (as on the CPU)\n"
# gs: the gradient's clip factor in graph mode (clip_norm), 1 otherwise (source.CLIP_SCALE)
LR = SKIP + "const T lr = (T)sc[0];\nconst T gs = (T)clip_scale(sc);\n"
ADAM_PRE = LR + """
const double t = (double)count[0];
const T bc1 = (T)(1.0 - pow(b1, t));  // Adam bias correction, 1/(1 - beta^t)
const T inv_sqrt_bc2 = (T)(1.0 / sqrt(1.0 - pow(b2, t)));
"""
MOMENTS = """
const T gi = (ld(g[i]) * gs);
const T mi = (T)b1 * ld(m[i]) + (T)(1.0 - b1) * gi;
const T vi = (T)b2 * ld(v[i]) + (T)(1.0 - b2) * gi * gi;
m[i] = st(mi); v[i] = st(vi);
const T denom = sqrt(vi) * inv_sqrt_bc2 + (T)eps;
"""
MV = [("S* __restrict__", "m"), ("S* __restrict__", "v")]
B12E = [("const double", "b1"), ("const double", "b2"), ("const double", "eps")]


def _d(*names):
    return [("const double", n) for n in names]


def kernels(dtype: str) -> dict:
    """name -> Kernel for every optimizer update of this dtype."""
    k = {"tick": single("tick", dtype, [("long long*", "c"), SC], f"if ({STEP_FINITE}) c[0] += 1;"),
         "grad_sq_norm": grad_sq_norm(dtype), "tick_rows": tick_rows(dtype)}
    k.update(_gradient_descent(dtype))
    k.update(_moments(dtype))
    k.update(_novograd(dtype))
    k["lookahead_sync"] = elementwise("lookahead_sync", dtype,
                                      [P, ("S* __restrict__", "slow"), ("const long long* __restrict__", "la_count"), SC]
                                      + [("const long long", "k")] + _d("alpha"), """
        const T s = ld(slow[i]) + (T)alpha * (ld(p[i]) - ld(slow[i]));
        slow[i] = st(s);
        p[i] = slow[i];""", SKIP + "if (la_count[0] % k != 0) return;  // phi syncs every k inner steps\n")
    return k


def _pair(k: dict, name: str, dtype: str, params, body: str, prologue: str = "") -> None:
    """An update's flat kernel and its rows twin for trial arrays (source.elementwise_rows)."""
    k[name] = elementwise(name, dtype, params, body, prologue)
    k[f"{name}_rows"] = elementwise_rows(name, dtype, params, body, prologue)


def _gradient_descent(dtype: str) -> dict:
    """SGD, momentum, Nesterov, AdaGrad, RMSProp, AdaDelta (optim/sgd.py, optim/adaptive.py)."""
    k = {}
    _pair(k, "sgd", dtype, [P, G, SC], "p[i] = st(ld(p[i]) - lr * (ld(g[i]) * gs));", LR)
    _pair(k, "momentum", dtype, [P, G, ("S* __restrict__", "v"), SC] + _d("alpha"), """
        const T vi = (T)alpha * ld(v[i]) - lr * (ld(g[i]) * gs);
        v[i] = st(vi);
        p[i] = st(ld(p[i]) + vi);""", LR)
    # phi <- phi + alpha v - eps g (parameters kept at the look-ahead point, see optim/sgd.py)
    _pair(k, "nesterov", dtype, [P, G, ("S* __restrict__", "v"), SC] + _d("alpha"), """
        const T eg = lr * (ld(g[i]) * gs);
        const T vi = (T)alpha * ld(v[i]) - eg;
        v[i] = st(vi);
        p[i] = st(ld(p[i]) - eg + (T)alpha * vi);""", LR)
    _pair(k, "adagrad", dtype, [P, G, ("S* __restrict__", "r"), SC] + _d("delta"), """
        const T gi = (ld(g[i]) * gs);
        const T ri = ld(r[i]) + gi * gi;
        r[i] = st(ri);
        p[i] = st(ld(p[i]) - lr * gi / ((T)delta + sqrt(ri)));""", LR)
    _pair(k, "rmsprop", dtype, [P, G, ("S* __restrict__", "r"), SC] + _d("rho", "delta"), """
        const T gi = (ld(g[i]) * gs);
        const T ri = (T)rho * ld(r[i]) + (T)(1.0 - rho) * gi * gi;
        r[i] = st(ri);
        p[i] = st(ld(p[i]) - lr * gi / sqrt((T)delta + ri));""", LR)
    _pair(k, "adadelta", dtype,
                                [P, G, ("S* __restrict__", "eg2"), ("S* __restrict__", "edx2"), SC] + _d("gamma", "eps"), """
        const T gi = (ld(g[i]) * gs);
        const T e = (T)gamma * ld(eg2[i]) + (T)(1.0 - gamma) * gi * gi;
        eg2[i] = st(e);
        const T dx = sqrt(ld(edx2[i]) + (T)eps) / sqrt(e + (T)eps) * gi;
        edx2[i] = st((T)gamma * ld(edx2[i]) + (T)(1.0 - gamma) * dx * dx);
        p[i] = st(ld(p[i]) - lr * dx);""", LR)
    return k


def _moments(dtype: str) -> dict:
    """Adam, NAdam, RAdam (optim/adam.py) and Rprop (optim/rprop.py)."""
    k = {}
    _pair(k, "adam", dtype, [P, G] + MV + [COUNT, SC] + B12E,
                            MOMENTS + "p[i] = st(ld(p[i]) - lr / bc1 * mi / denom);", ADAM_PRE)
    _pair(k, "nadam", dtype, [P, G] + MV + [COUNT, SC] + B12E, MOMENTS + """
        const T num = (T)b1 / bc1 * mi + (T)(1.0 - b1) / bc1 * gi;
        p[i] = st(ld(p[i]) - lr * num / denom);""", ADAM_PRE)
    # RAdam: r_t, or un-adapted momentum while rho_t <= 4 (optim/adam.py radam_rectifier)
    _pair(k, "radam", dtype, [P, G] + MV + [COUNT, SC] + B12E, MOMENTS + """
        p[i] = st(ld(p[i]) - (rect > 0 ? lr * (T)rect / bc1 * mi / denom : lr / bc1 * mi));""", ADAM_PRE + """
        const double rho_inf = 2.0 / (1.0 - b2) - 1.0;
        const double rho_t = rho_inf - 2.0 * t * pow(b2, t) / (1.0 - pow(b2, t));
        const double rect = rho_t <= 4.0 ? -1.0 :
            sqrt(((rho_t - 4) * (rho_t - 2) * rho_inf) / ((rho_inf - 4) * (rho_inf - 2) * rho_t));""")
    _pair(k, "rprop", dtype, [P, G, ("S* __restrict__", "step"), ("signed char* __restrict__", "prev"), SC]
                             + _d("eta_plus", "eta_minus", "step_min", "step_max"), """
        const T gi = ld(g[i]);
        const T sg = (T)((gi > (T)0) - (gi < (T)0));
        const T f = sg * (T)prev[i];
        const T factor = f > (T)0 ? (T)eta_plus : (f < (T)0 ? (T)eta_minus : (T)1);
        const T u = fmin(fmax(ld(step[i]) * factor, (T)step_min), (T)step_max);
        step[i] = st(u);
        prev[i] = (signed char)sg;
        p[i] = st(ld(p[i]) - sg * ld(st(u)));""", SKIP)
    return k


def _novograd(dtype: str) -> dict:
    """NovoGrad's second moment is one scalar per parameter tensor, so each
    tensor gets a norm kernel (one block reduces ||g_l||^2 and updates v_l)
    and an update kernel over its slice."""
    norm = rowwise("novograd_norm", dtype, [G, ("S*", "v"), COUNT, SC, ("const long long", "n"),
                                            ("const long long", "layer")] + _d("b2"), """
        if (!(""" + STEP_FINITE + """)) return;
        const double gs = clip_scale(sc);
        double acc = 0;
        for (long long i = threadIdx.x; i < n; i += blockDim.x) { const double gi = (double)ld(g[i]) * gs; acc += gi * gi; }
        const double norm2 = block_sum(acc, shared);
        // v_1 = ||g_1||^2, then v_t = beta2 v + (1 - beta2) ||g_t||^2
        if (threadIdx.x == 0) v[layer] = st((T)(count[0] == 1 ? norm2 : b2 * (double)ld(v[layer]) + (1.0 - b2) * norm2));""")
    update = elementwise("novograd", dtype, [P, G, ("S* __restrict__", "m"), ("const S*", "v"), SC,
                                             ("const long long", "layer")] + _d("b1", "eps", "weight_decay"), """
        const T gi = (ld(g[i]) * gs) * scale + (T)weight_decay * ld(p[i]);
        const T mi = (T)b1 * ld(m[i]) + gi;
        m[i] = st(mi);
        p[i] = st(ld(p[i]) - lr * mi);""", LR + "const T scale = (T)(1.0 / sqrt((double)ld(v[layer]) + eps));\n")
    return {"novograd_norm": norm, "novograd": update}


def tick_rows(dtype: str) -> Kernel:
    """`tick` for the n trials of a rows kernel, one thread each: c[idx[i] * c_rs] += 1 where
    that trial's step scalars (row idx[n + i] of sc) say the step is finite."""
    body = ("const double* sc_i = sc + idx[n + i] * sc_rs;\n"
            f"if ({STEP_FINITE.replace('sc[', 'sc_i[')}) c[idx[i] * c_rs] += 1;")
    return elementwise("tick_rows", dtype, [("const long long* __restrict__", "idx"), ("long long*", "c"),
                                            ("const long long", "c_rs"), SC, ("const long long", "sc_rs")], body)


def grad_sq_norm(dtype: str) -> Kernel:
    """sc[SC_GRAD_SQ] += ||g||^2 (summed in double): the gradient's norm on the device, so
    that a captured step skips a non-finite gradient and the host reads the norm with the
    loss. Grid-stride loop, one block sum per block, one atomic add per block."""
    full = f"memtrain_grad_sq_norm_{dtype}"
    src = (prelude(dtype) + BLOCK_SUM
           + f'extern "C" __global__ void {full}(const long long n, const S* __restrict__ g, double* sc) {{\n'
           + "  __shared__ double shared[32];\n  double acc = 0;\n"
           + "  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;"
             " i += (long long)blockDim.x * gridDim.x) { const double x = (double)ld(g[i]); acc += x * x; }\n"
           + "  const double total = block_sum(acc, shared);\n"
           + f"  if (threadIdx.x == 0) atomicAdd(&sc[{SC_GRAD_SQ}], total);\n}}\n")
    return Kernel(full, src, dtype)


def all_kernels(dtype: str) -> list[Kernel]:
    return list(kernels(dtype).values())
