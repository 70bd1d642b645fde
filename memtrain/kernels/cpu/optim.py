"""One fused update per optimizer over the flat vectors (CPU twin of kernels/optim.py).

Each kernel reads and writes every element once, with the NumPy reference's
operations in the reference's order (memtrain/optim/*.py), so float32 and
float64 results are bit-identical to it; float16 computes in float32 between
loads and stores (the reference rounds every intermediate to float16).
Per-step scalars (bias corrections, lr / bc1, ...) are computed on the host,
in float64 as the reference does, then cast to the compute type (dispatch.py).

A trial array updates the trials of one optimizer group with one call per step
(train/trial_update.py): `<name>_rows(arrays..., idx, sc)` runs the flat kernel
`<name>` on each trial's rows of the stacked (K, P) arrays, trial after trial, so
each trial's elements get exactly its lone arithmetic. idx[a, j] is the row of
array a (p, g, then the slots: a slot's stack has rows only for the trials that
have the slot) that the j-th updated trial owns; sc[s, j] its s-th scalar in the
flat kernel's order (a flag as 1 or 0). Measured here (numba 0.68), a prange over
rows or tiles with the update inlined in a serial inner loop ran 1.5-7x slower
per element than the flat kernel's prange loop, and one such variant lost the
parameter's store; the loop over trials calling the flat kernel does neither.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from memtrain.kernels.cpu.scalar import kernel, ld, like, rows_kernel, st


@kernel
def sgd(p, g, lr):
    for i in prange(p.shape[0]):
        p[i] = st(p, ld(p[i]) - ld(g[i]) * lr)


@rows_kernel
def sgd_rows(p_stack, g_stack, idx, sc):
    for j in range(idx.shape[1]):
        sgd(p_stack[idx[0, j]], g_stack[idx[1, j]], sc[0, j])


@kernel
def momentum(p, g, v, lr, alpha):
    for i in prange(p.shape[0]):
        vi = ld(v[i]) * alpha - ld(g[i]) * lr
        v[i] = st(v, vi)
        p[i] = st(p, ld(p[i]) + ld(v[i]))


@rows_kernel
def momentum_rows(p_stack, g_stack, v_stack, idx, sc):
    for j in range(idx.shape[1]):
        momentum(p_stack[idx[0, j]], g_stack[idx[1, j]], v_stack[idx[2, j]], sc[0, j], sc[1, j])


@kernel
def nesterov(p, g, v, lr, alpha):
    # phi <- phi + alpha v - eps g (parameters kept at the look-ahead point, optim/sgd.py)
    for i in prange(p.shape[0]):
        eg = ld(g[i]) * lr
        v[i] = st(v, ld(v[i]) * alpha - eg)
        p[i] = st(p, (ld(p[i]) - eg) + ld(v[i]) * alpha)


@rows_kernel
def nesterov_rows(p_stack, g_stack, v_stack, idx, sc):
    for j in range(idx.shape[1]):
        nesterov(p_stack[idx[0, j]], g_stack[idx[1, j]], v_stack[idx[2, j]], sc[0, j], sc[1, j])


@kernel
def adagrad(p, g, r, lr, delta):
    for i in prange(p.shape[0]):
        gi = ld(g[i])
        r[i] = st(r, ld(r[i]) + gi * gi)
        p[i] = st(p, ld(p[i]) - gi / (np.sqrt(ld(r[i])) + delta) * lr)


@rows_kernel
def adagrad_rows(p_stack, g_stack, r_stack, idx, sc):
    for j in range(idx.shape[1]):
        adagrad(p_stack[idx[0, j]], g_stack[idx[1, j]], r_stack[idx[2, j]], sc[0, j], sc[1, j])


@kernel
def rmsprop(p, g, r, lr, rho, one_minus_rho, delta):
    for i in prange(p.shape[0]):
        gi = ld(g[i])
        r[i] = st(r, ld(r[i]) * rho + gi * gi * one_minus_rho)
        p[i] = st(p, ld(p[i]) - gi / np.sqrt(ld(r[i]) + delta) * lr)


@rows_kernel
def rmsprop_rows(p_stack, g_stack, r_stack, idx, sc):
    for j in range(idx.shape[1]):
        rmsprop(p_stack[idx[0, j]], g_stack[idx[1, j]], r_stack[idx[2, j]], sc[0, j], sc[1, j], sc[2, j], sc[3, j])


@kernel
def adadelta(p, g, eg2, edx2, lr, gamma, one_minus_gamma, eps):
    for i in prange(p.shape[0]):
        gi = ld(g[i])
        eg2[i] = st(eg2, ld(eg2[i]) * gamma + gi * gi * one_minus_gamma)
        dx = np.sqrt(ld(edx2[i]) + eps) / np.sqrt(ld(eg2[i]) + eps) * gi
        edx2[i] = st(edx2, ld(edx2[i]) * gamma + dx * dx * one_minus_gamma)
        p[i] = st(p, ld(p[i]) - dx * lr)


@rows_kernel
def adadelta_rows(p_stack, g_stack, eg2_stack, edx2_stack, idx, sc):
    for j in range(idx.shape[1]):
        adadelta(p_stack[idx[0, j]], g_stack[idx[1, j]], eg2_stack[idx[2, j]], edx2_stack[idx[3, j]],
                 sc[0, j], sc[1, j], sc[2, j], sc[3, j])


@kernel
def adam(p, g, m, v, b1, one_minus_b1, b2, one_minus_b2, inv_sqrt_bc2, eps, lr_bc1):
    for i in prange(p.shape[0]):
        gi = ld(g[i])
        m[i] = st(m, ld(m[i]) * b1 + gi * one_minus_b1)
        v[i] = st(v, ld(v[i]) * b2 + gi * gi * one_minus_b2)
        d = np.sqrt(ld(v[i])) * inv_sqrt_bc2 + eps
        p[i] = st(p, ld(p[i]) - ld(m[i]) / d * lr_bc1)


@rows_kernel
def adam_rows(p_stack, g_stack, m_stack, v_stack, idx, sc):
    for j in range(idx.shape[1]):
        adam(p_stack[idx[0, j]], g_stack[idx[1, j]], m_stack[idx[2, j]], v_stack[idx[3, j]],
             sc[0, j], sc[1, j], sc[2, j], sc[3, j], sc[4, j], sc[5, j], sc[6, j])


@kernel
def nadam(p, g, m, v, b1, one_minus_b1, b2, one_minus_b2, inv_sqrt_bc2, eps, b1_bc1, g_bc1, lr):
    for i in prange(p.shape[0]):
        gi = ld(g[i])
        m[i] = st(m, ld(m[i]) * b1 + gi * one_minus_b1)
        v[i] = st(v, ld(v[i]) * b2 + gi * gi * one_minus_b2)
        num = ld(m[i]) * b1_bc1 + gi * g_bc1
        d = np.sqrt(ld(v[i])) * inv_sqrt_bc2 + eps
        p[i] = st(p, ld(p[i]) - num / d * lr)


@rows_kernel
def nadam_rows(p_stack, g_stack, m_stack, v_stack, idx, sc):
    for j in range(idx.shape[1]):
        nadam(p_stack[idx[0, j]], g_stack[idx[1, j]], m_stack[idx[2, j]], v_stack[idx[3, j]],
              sc[0, j], sc[1, j], sc[2, j], sc[3, j], sc[4, j], sc[5, j], sc[6, j], sc[7, j], sc[8, j])


@kernel
def radam(p, g, m, v, b1, one_minus_b1, b2, one_minus_b2, inv_sqrt_bc2, eps, scale, rectified):
    # rectified: r_t exists (rho_t > 4); scale = lr r_t / bc1, else lr / bc1 (un-adapted momentum)
    for i in prange(p.shape[0]):
        gi = ld(g[i])
        m[i] = st(m, ld(m[i]) * b1 + gi * one_minus_b1)
        v[i] = st(v, ld(v[i]) * b2 + gi * gi * one_minus_b2)
        if rectified:
            d = np.sqrt(ld(v[i])) * inv_sqrt_bc2 + eps
            p[i] = st(p, ld(p[i]) - ld(m[i]) / d * scale)
        else:
            p[i] = st(p, ld(p[i]) - ld(m[i]) * scale)


@rows_kernel
def radam_rows(p_stack, g_stack, m_stack, v_stack, idx, sc):
    for j in range(idx.shape[1]):
        radam(p_stack[idx[0, j]], g_stack[idx[1, j]], m_stack[idx[2, j]], v_stack[idx[3, j]],
              sc[0, j], sc[1, j], sc[2, j], sc[3, j], sc[4, j], sc[5, j], sc[6, j], sc[7, j])


@kernel
def rprop(p, g, step, prev_sign, a, b, step_min, step_max):
    # factor = 1 + f (a f + b), f = sign(g) * previous sign, branch-free as in optim/rprop.py
    for i in prange(p.shape[0]):
        gi = ld(g[i])
        sg = like(gi, 1.0) if gi > 0 else (like(gi, -1.0) if gi < 0 else gi * like(gi, 0.0))
        f = sg * like(gi, prev_sign[i])
        prev_sign[i] = np.int8(sg)
        factor = f * b + f * f * a + like(gi, 1.0)
        u = min(max(ld(step[i]) * factor, step_min), step_max)
        step[i] = st(step, u)
        p[i] = st(p, ld(p[i]) - sg * ld(step[i]))


@rows_kernel
def rprop_rows(p_stack, g_stack, step_stack, prev_sign_stack, idx, sc):
    for j in range(idx.shape[1]):
        rprop(p_stack[idx[0, j]], g_stack[idx[1, j]], step_stack[idx[2, j]], prev_sign_stack[idx[3, j]],
              sc[0, j], sc[1, j], sc[2, j], sc[3, j])


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


@rows_kernel
def penalty_grad_rows(w_stack, gw_stack, idx, bounds, sc):
    # penalty_grad on each trial's weight tensors (bounds[b] = offset, end), with its own l1/l2:
    # sc[:, j] = 2 l2, l1, use_l2, use_l1 (flags as 1 or 0), cast as the flat call casts them
    for j in range(idx.shape[1]):
        w, gw = w_stack[idx[0, j]], gw_stack[idx[1, j]]
        for b in range(bounds.shape[0]):
            lo, hi = bounds[b, 0], bounds[b, 1]
            penalty_grad(w[lo:hi], gw[lo:hi], sc[0, j], sc[1, j], sc[2, j] != 0, sc[3, j] != 0)
