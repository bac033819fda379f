"""TAL's activation as one autograd node with compiled CPU loops (numba), same numbers as the
reference implementation in :mod:`sharewise.layers.tal`.

With the hinges sorted (``β_(0) ≤ … ≤ β_(M−1)``), the suffix sums ``A_t[j] = Σ_{m ≥ j} α_{t,(m)}``
and ``B_t[j] = Σ_{m ≥ j} α_{t,(m)} β_(m)`` (``A_t[M] = B_t[M] = 0``) and the bin
``k(z) = #{m: β_(m) ≤ z}``::

    f_t(z)      = (ReLU(z) + B_t[k]) − z · A_t[k]
    ∂f_t/∂z     = 1[z > 0] − A_t[k]
    ∂L/∂B_t[j]  = Σ_{z: k(z) = j} g_t          ∂L/∂A_t[j] = Σ_{z: k(z) = j} (−g_t) · z

then ``∂L/∂α`` and ``∂L/∂β`` from the two tables (prefix sums, :func:`table_grads`). The loops
visit each element once for the value and once for the gradients (the bin is a count of the
hinges ≤ z, M comparisons the compiler vectorises; no (batch, width, M) tensor), against
searchsorted, two gathers and two index_put accumulations of the reference.

The arithmetic is the reference's, in its order: float32 (or float64) operations element by
element, the table gradients accumulated sequentially in the element order as ``index_put_``
does, the table chain by the same torch ops as autograd's backward of the reference. The result
equals the reference bit for bit (tests) except that with a shared input the sum over tasks of
``∂f_t/∂z`` is sequential, where torch's reduction over the task axis is sequential only up to
about 16 tasks and some widths.
"""

from __future__ import annotations

import os

import torch
from torch.autograd.function import once_differentiable

_KERNELS = None  # (forward, dz, table sums) once compiled; False when numba cannot be imported


def _compile():
    """The numba kernels (imported and compiled on first use; numba caches them on disk)."""
    import numba
    import numpy as np

    @numba.njit(parallel=True, cache=True, nogil=True)
    def forward(z, q, slope, offset, out, bins, shared):
        # z (B, m, W) with m = 1 (shared input) or n (stacked: column t is task t's);
        # slope/offset (n, M + 1) the tables A, B; out (B, n, W); bins (B, m, W): k(z)
        batch, m, width = z.shape
        n = slope.shape[0]
        hinges = q.shape[0]
        zero = z.dtype.type(0)
        for b in numba.prange(batch):
            for j in range(m):
                row = z[b, j]
                k = bins[b, j]
                k[:] = 0
                for h in range(hinges):  # k = #{β ≤ z} (a NaN counts every hinge, as searchsorted)
                    bound = q[h]
                    for i in range(width):
                        k[i] += 0 if row[i] < bound else 1
                first, last = (0, n) if shared else (j, j + 1)
                for t in range(first, last):
                    a, c, o = slope[t], offset[t], out[b, t]
                    for i in range(width):
                        x = row[i]
                        r = zero if x <= zero else x  # ReLU (a NaN stays NaN)
                        o[i] = (r + c[k[i]]) - x * a[k[i]]

    @numba.njit(parallel=True, cache=True, nogil=True)
    def input_grad(z, bins, slope, grad, dz, shared):
        batch, m, width = z.shape
        n = slope.shape[0]
        zero = z.dtype.type(0)
        for b in numba.prange(batch):
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
                        d[i] = (zero if row[i] <= zero else g_sum) - ga_sum  # ReLU's backward passes a NaN's gradient
                else:
                    a, g = slope[j], grad[b, j]
                    for i in range(width):
                        d[i] = (zero if row[i] <= zero else g[i]) - g[i] * a[k[i]]

    @numba.njit(parallel=True, cache=True, nogil=True)
    def table_sums(z, bins, grad, d_slope, d_offset, shared):
        # per task, the elements in their order (sequential sums, as index_put_ accumulates)
        batch, m, width = z.shape
        n = d_slope.shape[0]
        for t in numba.prange(n):
            ds, do = d_slope[t], d_offset[t]
            for b in range(batch):
                g = grad[b, t]
                row, k = (z[b, 0], bins[b, 0]) if shared else (z[b, t], bins[b, t])
                for i in range(width):
                    kk = k[i]
                    do[kk] += g[i]
                    ds[kk] += -g[i] * row[i]

    del np
    return forward, input_grad, table_sums


def kernels():
    """The compiled kernels, or None when numba is not installed (``SHAREWISE_TAL_KERNEL=reference``
    also gives None)."""
    global _KERNELS
    if _KERNELS is None:
        if os.environ.get("SHAREWISE_TAL_KERNEL", "").lower() == "reference":
            return None
        try:
            _KERNELS = _compile()
        except ImportError:
            _KERNELS = False
    return _KERNELS or None


def supported(z: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> bool:
    """Whether the compiled path applies: CPU tensors of one float32/float64 dtype, a non-empty
    input and numba installed."""
    return (z.device.type == "cpu" and alpha.device.type == "cpu" and z.dtype in (torch.float32, torch.float64)
            and alpha.dtype == z.dtype and beta.dtype == z.dtype and z.numel() > 0 and kernels() is not None)


def _set_threads() -> None:
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def tables(alpha: torch.Tensor, beta: torch.Tensor):
    """``(β sorted, its permutation, α in that order, A, B)`` by the reference's torch ops."""
    beta_sorted, perm = torch.sort(beta)
    a = alpha[:, perm]
    zeros = a.new_zeros(a.shape[0], 1)
    slope = torch.cat([a.flip(1).cumsum(1).flip(1), zeros], 1)
    offset = torch.cat([(a * beta_sorted).flip(1).cumsum(1).flip(1), zeros], 1)
    return beta_sorted, perm, a, slope, offset


def table_grads(d_slope, d_offset, a, beta_sorted, perm, alpha_shape):
    """``(∂L/∂α, ∂L/∂β)`` from the tables' gradients, by the ops autograd runs for :func:`tables`:
    the backward of flip-cumsum-flip is a prefix sum, that of ``a * β`` a product and a sum over
    tasks, those of the permutations scatters."""
    d_a = d_slope[:, :-1].cumsum(1)
    d_prod = d_offset[:, :-1].cumsum(1)
    d_a = d_a + d_prod * beta_sorted
    d_beta_sorted = (d_prod * a).sum(0)
    d_alpha = d_a.new_zeros(alpha_shape)
    d_alpha[:, perm] = d_a
    d_beta = d_beta_sorted.new_zeros(beta_sorted.shape)
    d_beta[perm] = d_beta_sorted
    return d_alpha, d_beta


class TALActivation(torch.autograd.Function):
    """``f_t(z)`` for the rows of ``alpha`` (n, M): ``z`` (B, ...) shared → (B, n, ...), or
    ``stacked`` (B, n, ...) → (B, n, ...); gradients to z, α and β."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, stacked: bool) -> torch.Tensor:
        forward_kernel = kernels()[0]
        n = alpha.shape[0]
        with torch.no_grad():
            beta_sorted, perm, a, slope, offset = tables(alpha, beta)
        shared = not stacked
        batch = z.shape[0]
        z3 = z.detach().reshape(batch, 1 if shared else n, -1).contiguous()
        out = z.new_empty(batch, n, z3.shape[2])
        bins = torch.empty(z3.shape, dtype=torch.uint8 if beta.shape[0] < 256 else torch.int32)
        _set_threads()
        forward_kernel(z3.numpy(), beta_sorted.contiguous().numpy(), slope.numpy(), offset.numpy(), out.numpy(),
                       bins.numpy(), shared)
        ctx.save_for_backward(z3, bins, slope, a, beta_sorted, perm)
        ctx.shared, ctx.z_shape, ctx.alpha_shape = shared, z.shape, alpha.shape
        return out.view(batch, n, *z.shape[1 if shared else 2:])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        z3, bins, slope, a, beta_sorted, perm = ctx.saved_tensors
        _, input_grad, table_sums = kernels()
        n = slope.shape[0]
        g = grad.reshape(z3.shape[0], n, z3.shape[2]).contiguous()
        _set_threads()
        d_z = d_alpha = d_beta = None
        if ctx.needs_input_grad[0]:
            d_z = torch.empty_like(z3)
            input_grad(z3.numpy(), bins.numpy(), slope.numpy(), g.numpy(), d_z.numpy(), ctx.shared)
            d_z = d_z.view(ctx.z_shape)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            d_slope, d_offset = torch.zeros_like(slope), torch.zeros_like(slope)
            table_sums(z3.numpy(), bins.numpy(), g.numpy(), d_slope.numpy(), d_offset.numpy(), ctx.shared)
            d_alpha, d_beta = table_grads(d_slope, d_offset, a, beta_sorted, perm, ctx.alpha_shape)
        return d_z, d_alpha, d_beta, None
