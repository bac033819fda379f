"""TAL's activation as one autograd node with compiled CPU loops (numba), same numbers as the
reference implementation in :mod:`sharewise.layers.tal`.

With the hinges sorted (``β_(0) ≤ … ≤ β_(M−1)``), the suffix sums ``A_t[j] = Σ_{m ≥ j} α_{t,(m)}``
and ``B_t[j] = Σ_{m ≥ j} α_{t,(m)} β_(m)`` (``A_t[M] = B_t[M] = 0``) and the bin
``k(z) = #{m: β_(m) ≤ z}``::

    f_t(z)      = (ReLU(z) + B_t[k]) − z · A_t[k]
    ∂f_t/∂z     = 1[z > 0] − A_t[k]
    ∂L/∂B_t[j]  = Σ_{z: k(z) = j} g_t          ∂L/∂A_t[j] = Σ_{z: k(z) = j} (−g_t) · z
    ∂L/∂α_{t,(m)} = Σ_{j ≤ m} ∂L/∂A_t[j] + β_(m) Σ_{j ≤ m} ∂L/∂B_t[j]
    ∂L/∂β_(m)     = Σ_t α_{t,(m)} Σ_{j ≤ m} ∂L/∂B_t[j]

One call computes the tables and the values, one the three gradients: each element is visited
once for its value (its bin a count of the hinges ≤ z, four hinges a vectorised pass; no
(batch, width, M) tensor) and once for its gradients, against searchsorted, two gathers and two
``index_put_`` accumulations and a dozen small table operations of the reference. The loops are
serial: a thread pool of numba's own beside torch's was measured to slow torch's operations down
several times after each use.

The arithmetic is the reference's, in its order: float32 (or float64) operations element by
element, the suffix and prefix sums accumulated in double as torch's ``cumsum`` does, the table
gradients accumulated sequentially in the element order as ``index_put_`` does (on one thread;
with more, torch's accumulation is parallel and unordered), the sum over tasks of ``∂L/∂β`` by
torch. The result equals the reference bit for bit (tests), except that with a shared input the
sum over tasks of ``∂f_t/∂z`` is sequential, where torch's reduction over the task axis is
sequential only for up to about 16 tasks and some widths (last bits).
"""

from __future__ import annotations

import os

import torch
from torch.autograd.function import once_differentiable

_KERNELS = None  # (forward, backward) once compiled; False when numba cannot be imported
_HINGES_PER_PASS = 4


def _compile():
    """The numba kernels (imported and compiled on first use; numba caches them on disk)."""
    import numba
    import numpy as np

    @numba.njit(cache=True, nogil=True)
    def forward(z, alpha, perm, q, out, bins, tables, shared):
        # z (B, m, W): m = 1 (shared input) or n (stacked: column t is task t's); alpha (n, M);
        # perm, q: the hinges' sorting permutation and the sorted hinges; out (B, n, W); bins
        # (B, m, W): k(z); tables (3, n, M + 1): α in hinge order (its first M columns), A, B
        batch, m, width = z.shape
        n, hinges = alpha.shape
        a, slope, offset = tables[0], tables[1], tables[2]
        zero = z.dtype.type(0)
        for t in range(n):  # the tables: suffix sums in double, as torch's cumsum of a float tensor
            for h in range(hinges):
                a[t, h] = alpha[t, perm[h]]
            acc_a = 0.0
            acc_b = 0.0
            slope[t, hinges] = zero
            offset[t, hinges] = zero
            for h in range(hinges - 1, -1, -1):
                acc_a += a[t, h]
                acc_b += a[t, h] * q[h]  # the product rounded in z's dtype first, as a * β
                slope[t, h] = acc_a
                offset[t, h] = acc_b
        padded = -(-hinges // 4) * 4
        qp = np.full(padded, np.inf, dtype=z.dtype)  # +∞ never counts for a number; a NaN counts every hinge
        qp[:hinges] = q
        count = np.zeros(width, np.int32)
        for b in range(batch):
            for j in range(m):
                row = z[b, j]
                count[:] = 0
                for h in range(0, padded, 4):  # k = #{β ≤ z}, a NaN (and +∞) → M, as searchsorted
                    q0, q1, q2, q3 = qp[h], qp[h + 1], qp[h + 2], qp[h + 3]
                    for i in range(width):
                        x = row[i]
                        count[i] += ((np.int32(not x < q0) + np.int32(not x < q1))
                                     + (np.int32(not x < q2) + np.int32(not x < q3)))
                k = bins[b, j]
                for i in range(width):
                    k[i] = min(count[i], hinges)
                first, last = (0, n) if shared else (j, j + 1)
                for t in range(first, last):
                    sa, sb, o = slope[t], offset[t], out[b, t]
                    for i in range(width):
                        x = row[i]
                        r = zero if x <= zero else x  # ReLU (a NaN stays NaN)
                        o[i] = (r + sb[k[i]]) - x * sa[k[i]]

    @numba.njit(cache=True, nogil=True)
    def backward(z, bins, tables, q, perm, grad, dz, d_params, shared, need_z, need_params):
        # d_params (2, n, M): ∂L/∂α, and the terms α_{t,(m)} Σ_{j ≤ m} ∂L/∂B_t[j] of ∂L/∂β_(m)
        batch, m, width = z.shape
        a, slope = tables[0], tables[1]
        n, hinges = a.shape[0], a.shape[1] - 1
        d_alpha, d_beta_terms = d_params[0], d_params[1]
        zero = z.dtype.type(0)
        if need_z:
            for b in range(batch):
                for j in range(m):
                    row, k, d = z[b, j], bins[b, j], dz[b, j]
                    if shared:
                        for i in range(width):
                            kk = k[i]
                            g_sum = grad[b, 0, i]
                            ga_sum = g_sum * slope[0, kk]
                            for t in range(1, n):
                                g = grad[b, t, i]
                                g_sum += g
                                ga_sum += g * slope[t, kk]
                            d[i] = (zero if row[i] <= zero else g_sum) - ga_sum  # ReLU's backward passes a NaN's
                    else:
                        sa, g = slope[j], grad[b, j]
                        for i in range(width):
                            d[i] = (zero if row[i] <= zero else g[i]) - g[i] * sa[k[i]]
        if not need_params:
            return
        d_slope = np.zeros(hinges + 1, dtype=z.dtype)
        d_offset = np.zeros(hinges + 1, dtype=z.dtype)
        for t in range(n):
            d_slope[:] = 0
            d_offset[:] = 0
            for b in range(batch):  # each task's elements in their order, as index_put_ accumulates
                row, k, g = (z[b, 0], bins[b, 0], grad[b, t]) if shared else (z[b, t], bins[b, t], grad[b, t])
                for i in range(width):
                    kk = k[i]
                    if kk < hinges:  # the last bin's table entries are constants (0): nothing to sum
                        d_offset[kk] += g[i]
                        d_slope[kk] += -g[i] * row[i]
            acc_a = 0.0
            acc_b = 0.0
            for h in range(hinges):  # prefix sums in double (torch's cumsum), rounded at each step
                acc_a += d_slope[h]
                acc_b += d_offset[h]
                prefix_a = z.dtype.type(acc_a)
                prefix_b = z.dtype.type(acc_b)
                d_alpha[t, perm[h]] = prefix_a + prefix_b * q[h]
                d_beta_terms[t, h] = prefix_b * a[t, h]

    return forward, backward


_REFERENCE_ONLY = os.environ.get("SHAREWISE_TAL_KERNEL", "").lower() == "reference"


def kernels():
    """The compiled kernels, or None when numba is not installed (or the environment sets
    ``SHAREWISE_TAL_KERNEL=reference`` at import)."""
    global _KERNELS
    if _KERNELS is None:
        try:
            _KERNELS = False if _REFERENCE_ONLY else _compile()
        except ImportError:
            _KERNELS = False
    return _KERNELS or None


def supported(z: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> bool:
    """Whether the compiled path applies: CPU tensors of one float32/float64 dtype, a non-empty
    input and numba installed."""
    return (z.device.type == "cpu" and alpha.device.type == "cpu" and z.dtype in (torch.float32, torch.float64)
            and alpha.dtype == z.dtype and beta.dtype == z.dtype and z.numel() > 0 and kernels() is not None)


class TALActivation(torch.autograd.Function):
    """``f_t(z)`` for the rows of ``alpha`` (n, M): ``z`` (B, ...) shared → (B, n, ...), or
    ``stacked`` (B, n, ...) → (B, n, ...); gradients to z, α and β."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, stacked: bool) -> torch.Tensor:
        n, hinges = alpha.shape
        shared = not stacked
        batch = z.shape[0]
        with torch.no_grad():
            q, perm = torch.sort(beta)
        z3 = z.detach().reshape(batch, 1 if shared else n, -1).contiguous()
        out = z.new_empty(batch, n, z3.shape[2])
        bins = torch.empty(z3.shape, dtype=torch.uint8 if hinges < 256 else torch.int32)
        tables = alpha.new_empty(3, n, hinges + 1)
        _KERNELS[0](z3.numpy(), alpha.detach().contiguous().numpy(), perm.numpy(), q.numpy(), out.numpy(), bins.numpy(),
                    tables.numpy(), shared)
        ctx.save_for_backward(z3, bins, tables, q, perm)
        ctx.shared, ctx.z_shape = shared, z.shape
        return out.view(batch, n, *z.shape[1 if shared else 2:])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        z3, bins, tables, q, perm = ctx.saved_tensors
        need_z, need_alpha, need_beta = ctx.needs_input_grad[:3]
        need_params = need_alpha or need_beta
        n, hinges = tables.shape[1], tables.shape[2] - 1
        g = grad.reshape(z3.shape[0], n, z3.shape[2]).contiguous()
        d_z = torch.empty_like(z3) if need_z else z3.new_empty(0, 0, 0)
        d_params = tables.new_empty(2, n, hinges) if need_params else tables.new_empty(2, 0, 0)
        _KERNELS[1](z3.numpy(), bins.numpy(), tables.numpy(), q.numpy(), perm.numpy(), g.numpy(), d_z.numpy(),
                    d_params.numpy(), ctx.shared, need_z, need_params)
        d_beta = None
        if need_beta:  # Σ over tasks by torch (its reduction order), then back to the hinges' order
            d_beta = q.new_empty(q.shape).index_copy_(0, perm, d_params[1].sum(0))
        return (d_z.view(ctx.z_shape) if need_z else None), (d_params[0] if need_alpha else None), d_beta, None
