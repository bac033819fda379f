"""TAL (TAAN): the activation, its shapes and BatchNorm options, and the functional regularisers'
closed forms against Monte Carlo (spec §2, §8)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sharewise.errors import ConfigError
from sharewise.layers import TALConv2d, TALLinear, single_task
from sharewise.layers.tal import (adaptive_activation, function_distances, function_gram, functional_penalty,
                                  gaussian_moments)


def _naive(z, alpha, beta):
    """f_t(z) with the (…, M) hinge tensor materialised: the definition."""
    hinges = F.relu(beta - z.unsqueeze(-1))  # (..., M)
    return F.relu(z).unsqueeze(-1) + hinges @ alpha.T  # (..., T)


def _has_numba():
    from sharewise.layers import _tal_kernel

    return _tal_kernel.kernels() is not None


KERNELS = ["reference", pytest.param("fused", marks=pytest.mark.skipif(not _has_numba(), reason="numba not installed"))]


@pytest.mark.parametrize("kernel", KERNELS)
def test_activation_matches_the_definition_values_and_gradients(kernel):
    torch.manual_seed(0)
    alpha = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(5, dtype=torch.float64, requires_grad=True)
    z = torch.randn(7, 4, dtype=torch.float64, requires_grad=True) * 1.5
    got = adaptive_activation(z, alpha, beta, stacked=False, kernel=kernel)  # (B, T, d)
    want = _naive(z, alpha, beta).permute(0, 2, 1)
    torch.testing.assert_close(got, want)
    g1 = torch.autograd.grad((got * torch.cos(want.detach())).sum(), (alpha, beta, z))
    g2 = torch.autograd.grad((want * torch.cos(want.detach())).sum(), (alpha, beta, z))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    # stacked: column i of z belongs to task i
    zs = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    got = adaptive_activation(zs, alpha, beta, stacked=True, kernel=kernel)
    want = torch.stack([_naive(zs[:, i], alpha[i:i + 1], beta)[..., 0] for i in range(3)], 1)
    torch.testing.assert_close(got, want)
    g1 = torch.autograd.grad((got * torch.sin(want.detach())).sum(), (alpha, beta, zs))
    g2 = torch.autograd.grad((want * torch.sin(want.detach())).sum(), (alpha, beta, zs))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("stacked", [False, True])
def test_activation_gradcheck(kernel, stacked):
    torch.manual_seed(5)
    alpha = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(6, dtype=torch.float64, requires_grad=True)
    z = torch.randn(4, *((3,) if stacked else ()), 5, dtype=torch.float64) * 1.5
    z = z + 0.05 * torch.sign(z)  # no input within the finite-difference step of 0 (ReLU's kink)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z_, a_, b_: adaptive_activation(z_, a_, b_, stacked=stacked, kernel=kernel),
                                    (z, alpha, beta), eps=1e-6, atol=1e-5)


@pytest.mark.skipif(not _has_numba(), reason="numba not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(64, 16, 256), (5, 3, 2, 4, 4), (8, 1, 1024), (4, 16, 300)])
@pytest.mark.parametrize("stacked", [False, True])
@pytest.mark.parametrize("hinges", [64, 7])
def test_fused_kernel_equals_the_reference_bit_for_bit(dtype, shape, stacked, hinges):
    # the same arithmetic in the same order: values and the gradients to z, α and β are equal
    # (one thread: torch's index_put_ accumulation, which the reference uses, is parallel and
    # unordered with more), except the gradient to a shared input summed over several tasks:
    # sequential in the kernel, in torch's reduction only for some widths (last bits)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(sum(shape))
        batch, n, *feature = shape
        alpha = (0.3 * torch.randn(n, hinges, generator=gen, dtype=dtype)).requires_grad_(True)
        beta = (torch.rand(hinges, generator=gen, dtype=dtype) - 0.5).requires_grad_(True)
        z = torch.randn(batch, *((n,) if stacked else ()), *feature, generator=gen, dtype=dtype)
        special = [0.0, float(beta[5].detach()), float("nan"), float("inf"), -float("inf")]  # a kink, a hinge, ...
        z.view(-1)[:5] = torch.tensor(special, dtype=dtype)
        z.requires_grad_(True)
        grad = torch.randn(batch, n, *feature, generator=gen, dtype=dtype)
        results = []
        for kernel in ("reference", "fused"):
            out = adaptive_activation(z, alpha, beta, stacked=stacked, kernel=kernel)
            results.append((out, *torch.autograd.grad(out, (z, alpha, beta), grad)))
        for i, (ref, fused) in enumerate(zip(*results)):
            assert ref.dtype == fused.dtype and ref.shape == fused.shape
            exact = i != 1 or stacked or shape[-1] % 16 == 0
            tol = 0 if exact else 1e-5 if dtype == torch.float32 else 1e-12
            torch.testing.assert_close(fused, ref, rtol=tol, atol=tol, equal_nan=True)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not _has_numba(), reason="numba not installed")
def test_fused_kernel_does_not_depend_on_the_thread_count():
    gen = torch.Generator().manual_seed(6)
    alpha = torch.randn(16, 64, generator=gen, requires_grad=True)
    beta = (torch.rand(64, generator=gen) - 0.5).requires_grad_(True)
    z = torch.randn(64, 16, 256, generator=gen, requires_grad=True)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = adaptive_activation(z, alpha, beta, stacked=True, kernel="fused")
            results.append((out, *torch.autograd.grad(out.square().sum(), (z, alpha, beta))))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_zero_slopes_give_relu_and_identity_above_the_hinges():
    torch.manual_seed(1)
    layer = TALLinear(6, 5, num_tasks=3, num_basis=4)
    with torch.no_grad():
        layer.alpha.zero_()
    x = torch.randn(8, 6)
    torch.testing.assert_close(layer(x, task=1), F.relu(layer.linear(x)))
    with torch.no_grad():
        layer.alpha.normal_()
    z = torch.linspace(0.6, 3.0, 11)  # above every hinge (β ∈ (−0.5, 0.5)): f_t(z) = z for all tasks
    torch.testing.assert_close(layer.curves(z), z.expand(3, -1))


def test_shapes_names_context_and_subsets():
    torch.manual_seed(2)
    layer = TALLinear(6, 5, num_tasks=3, num_basis=4, task_names=["a", "b", "c"])
    x = torch.randn(8, 6)
    every = layer(x)
    assert every.shape == (8, 3, 5)
    torch.testing.assert_close(layer(x, task="b"), every[:, 1])
    torch.testing.assert_close(layer(x, task=2), every[:, 2])
    with single_task(0):
        torch.testing.assert_close(layer(x), every[:, 0])
    torch.testing.assert_close(layer(x, task=[2, 0]), every[:, [2, 0]])
    per_task = torch.randn(8, 2, 6)
    out = layer(per_task, task=[1, 2])
    torch.testing.assert_close(out[:, 0], layer(per_task[:, 0], task=1))
    with pytest.raises(KeyError):
        layer(x, task="z")
    calls = []
    layer.linear.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    layer(x)
    assert calls == [(8, 6)]  # all tasks on a shared input: the affine part once
    conv = TALConv2d(2, 4, 3, num_tasks=3, num_basis=4, padding=1)
    assert conv(torch.randn(2, 2, 5, 5)).shape == (2, 3, 4, 5, 5)  # training mode, BatchNorm2d as three calls
    assert int(conv.norm.num_batches_tracked) == 3
    conv.eval()
    img = torch.randn(2, 2, 5, 5)
    assert conv(img, task=0).shape == (2, 4, 5, 5)
    assert conv(img).shape == (2, 3, 4, 5, 5)
    torch.testing.assert_close(conv(img)[:, 1], conv(img, task=1))
    assert conv(torch.randn(2, 3, 2, 5, 5)).shape == (2, 3, 4, 5, 5)


def test_batchnorm_statistics_per_task_and_pooled():
    torch.manual_seed(3)
    x = torch.randn(16, 6)
    # shared input, all tasks: the same as three single-task calls (three running-statistics updates)
    a = TALLinear(6, 5, num_tasks=3, bn=True)
    b = TALLinear(6, 5, num_tasks=3, bn=True)
    b.load_state_dict(a.state_dict())
    out = a(x)
    singles = torch.stack([b(x, task=t) for t in range(3)], 1)
    torch.testing.assert_close(out, singles)
    torch.testing.assert_close(a.norm.running_mean, b.norm.running_mean)
    torch.testing.assert_close(a.norm.running_var, b.norm.running_var)
    assert int(a.norm.num_batches_tracked) == int(b.norm.num_batches_tracked) == 3
    # per-task inputs: per_task normalises each column on its own, pooled over batch × tasks
    xs = torch.randn(16, 3, 6) + torch.tensor([0.0, 3.0, -3.0]).view(1, 3, 1)
    per = TALLinear(6, 5, num_tasks=3, bn=True)
    pooled = TALLinear(6, 5, num_tasks=3, bn=True, bn_stats="pooled")
    pooled.load_state_dict(per.state_dict())
    out_per = per(xs)
    ref = TALLinear(6, 5, num_tasks=3, bn=True)
    ref.load_state_dict(pooled.state_dict())
    torch.testing.assert_close(out_per[:, 1], ref(xs[:, 1], task=1))
    out_pooled = pooled(xs)
    assert not torch.allclose(out_per, out_pooled)
    z = pooled.linear(xs).reshape(-1, 5)
    zn = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + pooled.norm.eps)
    want = adaptive_activation(zn.view(16, 3, 5), pooled.alpha, pooled.beta, stacked=True)
    torch.testing.assert_close(out_pooled, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mu,sigma", [(0.0, 1.0), (0.3, 0.7), (-0.5, 1.5)])
def test_closed_forms_match_monte_carlo(mu, sigma):
    gen = torch.Generator().manual_seed(4)
    n = 4_000_000
    beta = torch.tensor([-0.8, 0.2, 1.1], dtype=torch.float64)
    alpha = torch.tensor([[0.5, -0.3, 0.8], [-0.2, 0.6, 0.1]], dtype=torch.float64)
    e00, u, w = gaussian_moments(beta, mu, sigma)
    gram = function_gram(alpha, e00, u, w)
    z = mu + sigma * torch.randn(n, generator=gen, dtype=torch.float64)
    relu = F.relu(z)
    hinge = F.relu(beta - z[:, None])  # (n, M)
    f = relu[:, None] + hinge @ alpha.T  # (n, T)

    def check(samples, value):
        se = samples.std() / math.sqrt(n)
        assert abs(samples.mean() - value) <= 5 * se + 1e-12, (float(samples.mean()), float(value), float(se))

    check(relu * relu, e00)
    for m in range(3):
        check(relu * hinge[:, m], u[m])
        for k in range(3):
            check(hinge[:, m] * hinge[:, k], w[m, k])
    for s in range(2):
        for t in range(2):
            check(f[:, s] * f[:, t], gram[s, t])
    check((f[:, 0] - f[:, 1]) ** 2, function_distances(alpha, w)[0, 1])


def test_standard_measure_values_and_the_indicator():
    # standard normal: E00 = 1/2, U = 1[β > 0] (β φ(0) + 1/2 − Φ(β)); the spec's worked values
    e00, u, _ = gaussian_moments(torch.tensor([0.4, 1.3, -0.2], dtype=torch.float64))
    assert float(e00) == pytest.approx(0.5)
    assert u.tolist() == pytest.approx([0.0042, 0.1154, 0.0], abs=5e-5)


def test_distance_equals_its_variance_form_and_reaches_beta():
    torch.manual_seed(5)
    alpha = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(3, dtype=torch.float64, requires_grad=True)
    r = functional_penalty(alpha, beta, "distance")
    _, _, w = gaussian_moments(beta)
    pairwise = function_distances(alpha, w).sum() / 16
    torch.testing.assert_close(r, pairwise)
    g_alpha, g_beta = torch.autograd.grad(r, (alpha, beta))
    assert g_beta.abs().sum() > 0
    cos = functional_penalty(alpha, beta, "cosine")
    g_alpha, g_beta = torch.autograd.grad(cos, (alpha, beta), allow_unused=True)
    assert g_beta is None or g_beta.abs().sum() == 0
    assert g_alpha.abs().sum() > 0
    # basis_grad overrides the per-regulariser default
    r = functional_penalty(alpha, beta, "distance", basis_grad=False)
    assert torch.autograd.grad(r, beta, allow_unused=True)[0] is None
    c = functional_penalty(alpha, beta, "cosine", basis_grad=True)
    assert torch.autograd.grad(c, beta)[0].abs().sum() > 0


def test_cosine_value_and_detached_norms():
    torch.manual_seed(6)
    alpha = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(4, dtype=torch.float64)
    e00, u, w = gaussian_moments(beta)
    g = function_gram(alpha, e00, u, w)
    d = torch.sqrt(torch.diagonal(g))
    want = -(g / (d[:, None] * d[None, :])).sum() / 9
    got = functional_penalty(alpha, beta, "cosine")
    torch.testing.assert_close(got, want)
    detached = functional_penalty(alpha, beta, "cosine", cosine_detach_norms=True)
    torch.testing.assert_close(detached, want)
    g1 = torch.autograd.grad(got, alpha)[0]
    g2 = torch.autograd.grad(detached, alpha)[0]
    assert not torch.allclose(g1, g2)
    dd = d.detach()
    g3 = torch.autograd.grad(-(g / (dd[:, None] * dd[None, :])).sum() / 9, alpha)[0]
    torch.testing.assert_close(g2, g3)


def test_l21_and_nuclear_on_hand_made_alpha():
    alpha = torch.tensor([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]], dtype=torch.float64)
    beta = torch.tensor([0.1, 0.5], dtype=torch.float64)
    assert float(functional_penalty(alpha, beta, "l21")) == pytest.approx(5.0 + 0.0 + 10.0, abs=1e-5)
    # rank one: ‖α‖_* = its only singular value = ‖(3,4)‖ · ‖(1,0,2)‖ = 5 √5
    assert float(functional_penalty(alpha, beta, "nuclear")) == pytest.approx(5 * math.sqrt(5), abs=1e-4)
    diag = torch.tensor([[2.0, 0.0], [0.0, -3.0]], dtype=torch.float64)
    assert float(functional_penalty(diag, beta, "nuclear")) == pytest.approx(5.0)
    # function metric: Σ √λ(α W αᵀ) = nuclear norm of α W^{1/2}
    _, _, w = gaussian_moments(beta)
    evals, evecs = torch.linalg.eigh(w)
    root = evecs @ torch.diag(evals.sqrt()) @ evecs.T
    want = torch.linalg.svdvals(diag @ root).sum()
    got = functional_penalty(diag, beta, "nuclear", nuclear_metric="function")
    assert float(got) == pytest.approx(float(want), abs=1e-5)


def test_regularization_contract_and_tracenorm_rejected():
    layer = TALLinear(4, 3, num_tasks=2, num_basis=3, regularizer="distance")
    r = layer.regularization(0.1)
    assert r.ndim == 0 and r.item() == pytest.approx(0.1 * layer.penalty().item())
    assert float(TALLinear(4, 3, num_tasks=2).regularization(0.1)) == 0.0
    with pytest.raises(ConfigError, match="l21.*nuclear"):
        TALLinear(4, 3, num_tasks=2, regularizer="tracenorm")
    ema = TALLinear(4, 3, num_tasks=2, regularizer="cosine", measure="ema")
    ema.train()
    ema(torch.randn(32, 4) * 3 + 2)
    assert float(ema.z_sd) != 1.0 and ema.measure_params()[1] == ema.z_sd
    sims = ema.similarity()
    assert sims["distance"].shape == (2, 2) and torch.diagonal(sims["cosine"]).tolist() == pytest.approx([1.0, 1.0])
