"""The fused CI-side kernels equal the chains of autograd ops they replace (values and grads)."""

import pytest
import torch

from tl_vpd.fused import firing_frequency, routed_masks
from tl_vpd.importance import lower_leaky_sigmoid, upper_leaky_sigmoid
from tl_vpd.losses import _firing_frequencies
from tl_vpd.masking import masks_from_sources


def _z(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (1.5 * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_(True)


@pytest.mark.parametrize("p", [2.0, 0.9, 0.4])
def test_firing_frequency_matches_upper_view_chain(p):
    z = _z(3, 5, 7)
    w = torch.randn(7, dtype=torch.float64)
    ref = _firing_frequencies({"s": upper_leaky_sigmoid(z, 0.01)}, p, 1e-12)["s"]
    (g_ref,) = torch.autograd.grad((ref * w).sum(), z)
    out = firing_frequency(z, p, 1e-12, 0.01)
    (g_out,) = torch.autograd.grad((out * w).sum(), z)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_out, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scope", ["per_token", "shared", "bank"])
@pytest.mark.parametrize("routed", [False, True])
def test_routed_masks_match_masks_from_sources(scope, routed):
    B, T, C = 3, 4, 6
    z = _z(B, T, C, seed=1)
    shape = {"per_token": (B, T, C + 1), "shared": (C + 1,), "bank": (B, 1, C + 1)}[scope]
    r = torch.rand(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    r.requires_grad_(True)
    route = torch.rand(B, T, generator=torch.Generator().manual_seed(3)) < 0.5 if routed else None
    wm = torch.randn(B, T, C, dtype=torch.float64)
    wd = torch.randn(B, T, dtype=torch.float64)

    m_ref, md_ref = masks_from_sources({"s": lower_leaky_sigmoid(z, 0.01)}, {"s": r},
                                       None if route is None else {"s": route})
    ref = (m_ref["s"] * wm).sum() + (md_ref["s"] * wd).sum()
    gz_ref, gr_ref = torch.autograd.grad(ref, (z, r))

    m, md = routed_masks(z, r, route, 0.01)
    out = (m * wm).sum() + (md * wd).sum()
    gz, gr = torch.autograd.grad(out, (z, r))
    torch.testing.assert_close(m, m_ref["s"])
    torch.testing.assert_close(md, md_ref["s"])
    torch.testing.assert_close(gz, gz_ref)
    torch.testing.assert_close(gr, gr_ref)


def test_routed_masks_leak_only_raises_z():
    """Below 0 the gradient leaks (×α) only when descent would raise z (negative gradient)."""
    z = torch.tensor([[-0.5, -0.5, 0.5]], requires_grad=True)
    r = torch.zeros(4)
    m, _ = routed_masks(z, r, None, 0.1)
    (m * torch.tensor([[-1.0, 1.0, 1.0]])).sum().backward()
    torch.testing.assert_close(z.grad, torch.tensor([[-0.1, 0.0, 1.0]]))


def test_compiled_kernels_equal_eager():
    """``compile=True`` runs the same kernels through torch.compile: same values and grads."""
    z = (1.5 * torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(4))).requires_grad_(True)
    r = torch.rand(2, 3, 6, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    route = torch.tensor([[True, False, True], [False, True, True]])
    w = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(6))
    results = []
    for compiled in (False, True):
        m, md = routed_masks(z, r, route, 0.01, compiled)
        f = firing_frequency(z, 0.9, 1e-12, 0.01, compiled)
        loss = (m * w).sum() + md.sum() + (f * torch.arange(5.0)).sum()
        results.append((m, md, f, *torch.autograd.grad(loss, (z, r))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("compiled", [False, True])
def test_scalar_mlp_equals_the_mlp_ci_function(compiled):
    """The fused ``mlp`` CI kernel (recomputing backward) equals PerSubcomponentMLP's autograd
    chain in values and in every gradient, for token-shaped ``[B, T, C]`` and flat inputs; in
    fp32 as the training step runs it."""
    from tl_vpd.fused import scalar_mlp
    from tl_vpd.importance import PerSubcomponentMLP

    torch.manual_seed(7)
    ci = PerSubcomponentMLP({"a": (4, 6), "b": (3, 5)}, hidden=3)
    with torch.no_grad():
        for p in (*ci.b1, *ci.b2):
            p.normal_()  # nonzero biases, so their gradients are checked too
    params = list(ci.parameters())
    for lead in [(4, 3), (9,)]:
        acts = {s: torch.randn(*lead, C, requires_grad=True) for s, (_, C) in ci.site_dims.items()}
        w = {s: torch.randn(*lead, C) for s, (_, C) in ci.site_dims.items()}
        results = []
        for fused in (False, True):
            if fused:
                out = {s: scalar_mlp(acts[s], ci.w1[i], ci.b1[i], ci.w2[i], ci.b2[i], compiled)
                       for i, s in enumerate(ci.site_names)}
            else:
                out = ci(None, acts)
            loss = sum((out[s] * w[s]).sum() for s in out)
            results.append((*out.values(), *torch.autograd.grad(loss, [*acts.values(), *params])))
        for a, b in zip(*results):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_mlp_ci_function_takes_the_fused_path_only_when_compiled_with_grad():
    """``compiled_sites`` switches the ``mlp`` CI function to the compiled kernel for the
    training step and back; under ``no_grad`` (evaluation) it stays on the eager chain."""
    from tl_vpd.components import compiled_sites
    from tl_vpd.importance import PerSubcomponentMLP

    ci = PerSubcomponentMLP({"a": (4, 6)}, hidden=3)
    acts = {"a": torch.randn(5, 6)}
    eager = ci(None, acts)["a"]
    with compiled_sites([], True, ci):
        assert ci.compiled
        fused = ci(None, acts)["a"]
        assert fused.grad_fn is not None and "ScalarMLP" in type(fused.grad_fn).__name__
        with torch.no_grad():
            torch.testing.assert_close(ci(None, acts)["a"], eager)
    assert not ci.compiled
    torch.testing.assert_close(fused, eager)


def _where_masks_fwd(z, r, route):
    """The mask kernel written with bool tensors and ``where`` (the reference)."""
    g = z.clamp(0.0, 1.0)
    m = torch.addcmul(g, 1.0 - g, r[..., :-1])
    md = r[..., -1].expand(z.shape[:-1])
    if route is not None:
        m, md = torch.where(route[..., None], m, 1.0), torch.where(route, md, 1.0)
    return m, md


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_arithmetic_step_functions_equal_the_where_chains_bit_for_bit(dtype):
    """The kernels build their step functions from sign/clamp (bool tensors, ``where`` and
    ``masked_fill_`` are ~20× slower on a CPU): on points exactly at 0 and 1, on either side
    and far out, every mask, Δ mask and gradient equals the ``where`` chain exactly (``==``,
    so a zeroed gradient may be -0.0)."""
    from tl_vpd.fused import _freq_bwd, _leaky_grad, _masks_bwd_r, _masks_bwd_z, _masks_fwd
    from tl_vpd.importance import lower_leaky_grad

    pts = torch.tensor([-2.0, -1e-7, 0.0, 1e-7, 0.3, 1 - 1e-7, 1.0, 1 + 1e-7, 3.0], dtype=dtype)
    z = pts.repeat(4, 3, 1)                                  # [B, T, C]
    gen = torch.Generator().manual_seed(8)
    gm = torch.randn(4, 3, 9, generator=gen, dtype=dtype)    # gradients of both signs
    gmd = torch.randn(4, 3, generator=gen, dtype=dtype)
    r = torch.rand(4, 3, 10, generator=gen, dtype=dtype)
    route = torch.rand(4, 3, generator=gen) < 0.5
    alpha = 0.01

    assert torch.equal(_leaky_grad(z, gm, alpha), lower_leaky_grad(z, gm, alpha))
    for rt in (None, route):
        for out, ref in zip(_masks_fwd(z, r, rt), _where_masks_fwd(z, r, rt)):
            assert torch.equal(out, ref)
        G = torch.addcmul(gm, gm, r[..., :-1], value=-1.0)
        gc = torch.addcmul(gm, gm, z.clamp(0.0, 1.0), value=-1.0)
        gd = gmd
        if rt is not None:
            G, gc = G.masked_fill(~rt[..., None], 0.0), gc.masked_fill(~rt[..., None], 0.0)
            gd = torch.where(rt, gmd, 0.0)
        assert torch.equal(_masks_bwd_z(z, r, rt, gm.clone(), alpha), lower_leaky_grad(z, G, alpha))
        assert torch.equal(_masks_bwd_r(z, rt, gm.clone(), gmd), torch.cat([gc, gd[..., None]], -1))
    base = z.clamp(0, 1) + 0.5
    p = torch.tensor(0.7, dtype=dtype)
    powered, grad_f = base ** p, torch.randn(9, generator=gen, dtype=dtype)
    slope = torch.where(z > 1, alpha, (z >= 0).to(dtype))
    ref = powered.div(base).mul_(slope).mul_(grad_f * (p / 12))
    assert torch.equal(_freq_bwd(z, base, powered, grad_f, p, alpha), ref)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("routed", [False, True])
def test_masks_in_the_forward_dtype_equal_a_cast_of_the_fp32_masks(routed, compiled):
    """``dtype=bf16`` (the masked forward's autocast dtype) gives bit for bit ``masks.to(bf16)``
    and, for a bf16 upstream gradient, the same fp32 gradients on z and r as the cast would."""
    gen = torch.Generator().manual_seed(9)
    z0 = 1.5 * torch.randn(3, 4, 6, generator=gen)
    r0 = torch.rand(3, 4, 7, generator=gen)
    route = torch.rand(3, 4, generator=gen) < 0.5 if routed else None
    wm = torch.randn(3, 4, 6, generator=gen).bfloat16()
    wd = torch.randn(3, 4, generator=gen).bfloat16()
    results = []
    for dtype in (None, torch.bfloat16):
        z, r = z0.clone().requires_grad_(True), r0.clone().requires_grad_(True)
        m, md = routed_masks(z, r, route, 0.01, compiled, dtype)
        if dtype is None:
            m, md = m.bfloat16(), md.bfloat16()
        assert m.dtype == md.dtype == torch.bfloat16
        ((m * wm).float().sum() + (md * wd).float().sum()).backward()
        assert z.grad.dtype == r.grad.dtype == torch.float32
        results.append((m, md, z.grad, r.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)
