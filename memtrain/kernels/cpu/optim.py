"""One fused update per optimizer over the flat vectors (CPU twin of kernels/optim.py).

Each kernel reads and writes every element once, with the NumPy reference's
operations in the reference's order (memtrain/optim/*.py), so float32 and
float64 results are bit-identical to it; float16 computes in float32 between
loads and stores (the reference rounds every intermediate to float16).
Per-step scalars (bias corrections, lr / bc1, ...) are computed on the host,
in float64 as the reference does, then cast to the compute type (dispatch.py).

Each element-wise update is written once, as a device function `_<name>` on
element i; two kernels call it: `<name>` over one flat vector (a Trainer's) and
`<name>_rows` over some rows of a trial array's stacked (K, P) vectors with
per-trial scalars (train/trials.py: one call per optimizer group and step), so a
trial's element gets the arithmetic of its lone run, bit for bit.
`<name>_rows(arrays..., idx, sc)`: idx[a, j] is the row of array a (p, g, then
the slots) that the j-th updated trial owns (a slot's stack has rows only for
the trials that have the slot); sc[s, j] its s-th scalar, in the flat kernel's
order (a flag as 1 or 0). Work is split in tiles of TILE elements of one row, so
a few trials of a large model still use every thread, and a tile's views are
made once, not per element.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from memtrain.kernels.cpu.scalar import device, kernel, ld, like, st

TILE = 4096  # elements of one row per parallel work item of a _rows kernel


@device
def tile(t, tiles, n):
    """Work item t of a _rows kernel: (the updated trial j, the element range [lo, hi) of its row)."""
    lo = (t % tiles) * TILE
    return t // tiles, lo, min(lo + TILE, n)


@device
def _sgd(p, g, i, lr):
    p[i] = st(p, ld(p[i]) - ld(g[i]) * lr)


@kernel
def sgd(p, g, lr):
    for i in prange(p.shape[0]):
        _sgd(p, g, i, lr)


@kernel
def sgd_rows(p, g, idx, sc):
    tiles = -(-p.shape[1] // TILE)
    for t in prange(idx.shape[1] * tiles):
        j, lo, hi = tile(t, tiles, p.shape[1])
        p_, g_ = p[idx[0, j]], g[idx[1, j]]
        for i in range(lo, hi):
            _sgd(p_, g_, i, sc[0, j])


@device
def _momentum(p, g, v, i, lr, alpha):
    vi = ld(v[i]) * alpha - ld(g[i]) * lr
    v[i] = st(v, vi)
    p[i] = st(p, ld(p[i]) + ld(v[i]))


@kernel
def momentum(p, g, v, lr, alpha):
    for i in prange(p.shape[0]):
        _momentum(p, g, v, i, lr, alpha)


@kernel
def momentum_rows(p, g, v, idx, sc):
    tiles = -(-p.shape[1] // TILE)
    for t in prange(idx.shape[1] * tiles):
        j, lo, hi = tile(t, tiles, p.shape[1])
        p_, g_, v_ = p[idx[0, j]], g[idx[1, j]], v[idx[2, j]]
        for i in range(lo, hi):
            _momentum(p_, g_, v_, i, sc[0, j], sc[1, j])


@device
def _nesterov(p, g, v, i, lr, alpha):
    # phi <- phi + alpha v - eps g (parameters kept at the look-ahead point, optim/sgd.py)
    eg = ld(g[i]) * lr
    v[i] = st(v, ld(v[i]) * alpha - eg)
    p[i] = st(p, (ld(p[i]) - eg) + ld(v[i]) * alpha)


@kernel
def nesterov(p, g, v, lr, alpha):
    for i in prange(p.shape[0]):
        _nesterov(p, g, v, i, lr, alpha)


@kernel
def nesterov_rows(p, g, v, idx, sc):
    tiles = -(-p.shape[1] // TILE)
    for t in prange(idx.shape[1] * tiles):
        j, lo, hi = tile(t, tiles, p.shape[1])
        p_, g_, v_ = p[idx[0, j]], g[idx[1, j]], v[idx[2, j]]
        for i in range(lo, hi):
            _nesterov(p_, g_, v_, i, sc[0, j], sc[1, j])


@device
def _adagrad(p, g, r, i, lr, delta):
    gi = ld(g[i])
    r[i] = st(r, ld(r[i]) + gi * gi)
    p[i] = st(p, ld(p[i]) - gi / (np.sqrt(ld(r[i])) + delta) * lr)


@kernel
def adagrad(p, g, r, lr, delta):
    for i in prange(p.shape[0]):
        _adagrad(p, g, r, i, lr, delta)


@kernel
def adagrad_rows(p, g, r, idx, sc):
    tiles = -(-p.shape[1] // TILE)
    for t in prange(idx.shape[1] * tiles):
        j, lo, hi = tile(t, tiles, p.shape[1])
        p_, g_, r_ = p[idx[0, j]], g[idx[1, j]], r[idx[2, j]]
        for i in range(lo, hi):
            _adagrad(p_, g_, r_, i, sc[0, j], sc[1, j])


@device
def _rmsprop(p, g, r, i, lr, rho, one_minus_rho, delta):
    gi = ld(g[i])
    r[i] = st(r, ld(r[i]) * rho + gi * gi * one_minus_rho)
    p[i] = st(p, ld(p[i]) - gi / np.sqrt(ld(r[i]) + delta) * lr)


@kernel
def rmsprop(p, g, r, lr, rho, one_minus_rho, delta):
    for i in prange(p.shape[0]):
        _rmsprop(p, g, r, i, lr, rho, one_minus_rho, delta)


@kernel
def rmsprop_rows(p, g, r, idx, sc):
    tiles = -(-p.shape[1] // TILE)
    for t in prange(idx.shape[1] * tiles):
        j, lo, hi = tile(t, tiles, p.shape[1])
        p_, g_, r_ = p[idx[0, j]], g[idx[1, j]], r[idx[2, j]]
        for i in range(lo, hi):
            _rmsprop(p_, g_, r_, i, sc[0, j], sc[1, j], sc[2, j], sc[3, j])


@device
def _adadelta(p, g, eg2, edx2, i, lr, gamma, one_minus_gamma, eps):
    gi = ld(g[i])
    eg2[i] = st(eg2, ld(eg2[i]) * gamma + gi * gi * one_minus_gamma)
    dx = np.sqrt(ld(edx2[i]) + eps) / np.sqrt(ld(eg2[i]) + eps) * gi
    edx2[i] = st(edx2, ld(edx2[i]) * gamma + dx * dx * one_minus_gamma)
    p[i] = st(p, ld(p[i]) - dx * lr)


@kernel
def adadelta(p, g, eg2, edx2, lr, gamma, one_minus_gamma, eps):
    for i in prange(p.shape[0]):
        _adadelta(p, g, eg2, edx2, i, lr, gamma, one_minus_gamma, eps)


@kernel
def adadelta_rows(p, g, eg2, edx2, idx, sc):
    tiles = -(-p.shape[1] // TILE)
    for t in prange(idx.shape[1] * tiles):
        j, lo, hi = tile(t, tiles, p.shape[1])
        p_, g_, eg2_, edx2_ = p[idx[0, j]], g[idx[1, j]], eg2[idx[2, j]], edx2[idx[3, j]]
        for i in range(lo, hi):
            _adadelta(p_, g_, eg2_, edx2_, i, sc[0, j], sc[1, j], sc[2, j], sc[3, j])


@device
def _adam(p, g, m, v, i, b1, one_minus_b1, b2, one_minus_b2, inv_sqrt_bc2, eps, lr_bc1):
    gi = ld(g[i])
    m[i] = st(m, ld(m[i]) * b1 + gi * one_minus_b1)
    v[i] = st(v, ld(v[i]) * b2 + gi * gi * one_minus_b2)
    d = np.sqrt(ld(v[i])) * inv_sqrt_bc2 + eps
    p[i] = st(p, ld(p[i]) - ld(m[i]) / d * lr_bc1)


@kernel
def adam(p, g, m, v, b1, one_minus_b1, b2, one_minus_b2, inv_sqrt_bc2, eps, lr_bc1):
    for i in prange(p.shape[0]):
        _adam(p, g, m, v, i, b1, one_minus_b1, b2, one_minus_b2, inv_sqrt_bc2, eps, lr_bc1)


@kernel
def adam_rows(p, g, m, v, idx, sc):
    tiles = -(-p.shape[1] // TILE)
    for t in prange(idx.shape[1] * tiles):
        j, lo, hi = tile(t, tiles, p.shape[1])
        p_, g_, m_, v_ = p[idx[0, j]], g[idx[1, j]], m[idx[2, j]], v[idx[3, j]]
        for i in range(lo, hi):
            _adam(p_, g_, m_, v_, i, sc[0, j], sc[1, j], sc[2, j], sc[3, j], sc[4, j], sc[5, j], sc[6, j])


@device
def _nadam(p, g, m, v, i, b1, one_minus_b1, b2, one_minus_b2, inv_sqrt_bc2, eps, b1_bc1, g_bc1, lr):
    gi = ld(g[i])
    m[i] = st(m, ld(m[i]) * b1 + gi * one_minus_b1)
    v[i] = st(v, ld(v[i]) * b2 + gi * gi * one_minus_b2)
    num = ld(m[i]) * b1_bc1 + gi * g_bc1
    d = np.sqrt(ld(v[i])) * inv_sqrt_bc2 + eps
    p[i] = st(p, ld(p[i]) - num / d * lr)


@kernel
def nadam(p, g, m, v, b1, one_minus_b1, b2, one_minus_b2, inv_sqrt_bc2, eps, b1_bc1, g_bc1, lr):
    for i in prange(p.shape[0]):
        _nadam(p, g, m, v, i, b1, one_minus_b1, b2, one_minus_b2, inv_sqrt_bc2, eps, b1_bc1, g_bc1, lr)


@kernel
def nadam_rows(p, g, m, v, idx, sc):
    tiles = -(-p.shape[1] // TILE)
    for t in prange(idx.shape[1] * tiles):
        j, lo, hi = tile(t, tiles, p.shape[1])
        p_, g_, m_, v_ = p[idx[0, j]], g[idx[1, j]], m[idx[2, j]], v[idx[3, j]]
        for i in range(lo, hi):
            _nadam(p_, g_, m_, v_, i, sc[0, j], sc[1, j], sc[2, j], sc[3, j], sc[4, j], sc[5, j], sc[6, j], sc[7, j], sc[8, j])


@device
def _radam(p, g, m, v, i, b1, one_minus_b1, b2, one_minus_b2, inv_sqrt_bc2, eps, scale, rectified):
    # rectified: r_t exists (rho_t > 4); scale = lr r_t / bc1, else lr / bc1 (un-adapted momentum)
    gi = ld(g[i])
    m[i] = st(m, ld(m[i]) * b1 + gi * one_minus_b1)
    v[i] = st(v, ld(v[i]) * b2 + gi * gi * one_minus_b2)
    if rectified:
        d = np.sqrt(ld(v[i])) * inv_sqrt_bc2 + eps
        p[i] = st(p, ld(p[i]) - ld(m[i]) / d * scale)
    else:
        p[i] = st(p, ld(p[i]) - ld(m[i]) * scale)


@kernel
def radam(p, g, m, v, b1, one_minus_b1, b2, one_minus_b2, inv_sqrt_bc2, eps, scale, rectified):
    for i in prange(p.shape[0]):
        _radam(p, g, m, v, i, b1, one_minus_b1, b2, one_minus_b2, inv_sqrt_bc2, eps, scale, rectified)


@kernel
def radam_rows(p, g, m, v, idx, sc):
    tiles = -(-p.shape[1] // TILE)
    for t in prange(idx.shape[1] * tiles):
        j, lo, hi = tile(t, tiles, p.shape[1])
        p_, g_, m_, v_ = p[idx[0, j]], g[idx[1, j]], m[idx[2, j]], v[idx[3, j]]
        for i in range(lo, hi):
            _radam(p_, g_, m_, v_, i, sc[0, j], sc[1, j], sc[2, j], sc[3, j], sc[4, j], sc[5, j], sc[6, j], sc[7, j])


@device
def _rprop(p, g, step, prev_sign, i, a, b, step_min, step_max):
    # factor = 1 + f (a f + b), f = sign(g) * previous sign, branch-free as in optim/rprop.py
    gi = ld(g[i])
    sg = like(gi, 1.0) if gi > 0 else (like(gi, -1.0) if gi < 0 else gi * like(gi, 0.0))
    f = sg * like(gi, prev_sign[i])
    prev_sign[i] = np.int8(sg)
    factor = f * b + f * f * a + like(gi, 1.0)
    u = min(max(ld(step[i]) * factor, step_min), step_max)
    step[i] = st(step, u)
    p[i] = st(p, ld(p[i]) - sg * ld(step[i]))


@kernel
def rprop(p, g, step, prev_sign, a, b, step_min, step_max):
    for i in prange(p.shape[0]):
        _rprop(p, g, step, prev_sign, i, a, b, step_min, step_max)


@kernel
def rprop_rows(p, g, step, prev_sign, idx, sc):
    tiles = -(-p.shape[1] // TILE)
    for t in prange(idx.shape[1] * tiles):
        j, lo, hi = tile(t, tiles, p.shape[1])
        p_, g_, step_, prev_sign_ = p[idx[0, j]], g[idx[1, j]], step[idx[2, j]], prev_sign[idx[3, j]]
        for i in range(lo, hi):
            _rprop(p_, g_, step_, prev_sign_, i, sc[0, j], sc[1, j], sc[2, j], sc[3, j])


@kernel
def novograd(p, g, m, lr, beta1, scale, weight_decay, decay):
    # one tensor's slice; scale = 1/sqrt(v_l + eps) from the tensor's whole gradient (host)
    for i in prange(p.shape[0]):
        s = ld(g[i]) * scale
        if decay:
            s = s + ld(p[i]) * weight_decay
        m[i] = st(m, ld(m[i]) * beta1 + s)
        p[i] = st(p, ld(p[i]) - ld(m[i]) * lr)


@kernel
def lookahead_sync(p, slow, alpha):
    for i in prange(p.shape[0]):
        s = ld(slow[i]) + (ld(p[i]) - ld(slow[i])) * alpha
        slow[i] = st(slow, s)
        p[i] = slow[i]


@kernel
def penalty_grad(w, gw, two_l2, l1, use_l2, use_l1):
    # g_W += 2 l2 W + l1 sign(W) (weights only; course: regularisation)
    for i in prange(w.shape[0]):
        wi = ld(w[i])
        gi = ld(gw[i])
        if use_l2:
            gi = gi + wi * two_l2
            gw[i] = st(gw, gi)
            gi = ld(gw[i])
        if use_l1:
            sw = like(wi, 1.0) if wi > 0 else (like(wi, -1.0) if wi < 0 else wi * like(wi, 0.0))
            gw[i] = st(gw, gi + sw * l1)
