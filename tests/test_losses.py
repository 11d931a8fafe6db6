"""Loss formulas against hand computation."""

import math

import pytest
import torch

from tl_vpd.losses import (
    faithfulness_loss,
    frequency_minimality_loss,
    importance_minimality_loss,
    kl_recon_loss,
    minimality_loss,
    mse_recon_loss,
    prepare_target,
    recon_loss,
)


def _ci() -> dict[str, torch.Tensor]:
    # "a": batch 2, C 2 (toy-model layout); "b": batch 1, pos 2, C 1 (transformer layout).
    return {
        "a": torch.tensor([[0.5, 0.0], [1.0, 0.25]]),
        "b": torch.tensor([[[0.2], [0.6]]]),
    }

def _paper_frequency(ci: torch.Tensor, p: float) -> torch.Tensor:
    """The VPD paper's raw-sum form, (1/BT) Σ_c s_c log2(1 + s_c) with s_c = Σ_{b,t} |g|^p."""
    flat = ci.reshape(-1, ci.shape[-1])
    s = flat.abs().pow(p).sum(dim=0)
    return (s * torch.log2(1 + s)).sum() / flat.shape[0]

def test_faithfulness_hand_computed():
    deltas = [
        torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        torch.tensor([[0.0, -1.0], [0.0, 0.0]]),
        torch.tensor([[1.0, 1.0, 1.0]]),
    ]
    # squares: 1+4+9+16 = 30, 1, 3 -> 34 over 4+4+3 = 11 parameters
    assert faithfulness_loss(deltas).item() == pytest.approx(34 / 11)
    assert faithfulness_loss(deltas[:2]).item() == pytest.approx(31 / 8)

def test_faithfulness_zero_for_exact_decomposition_and_rejects_empty():
    assert faithfulness_loss([torch.zeros(3, 4)]).item() == 0.0
    with pytest.raises(ValueError, match="at least one"):
        faithfulness_loss([])

def test_kl_hand_computed():
    p = [0.5, 0.3, 0.2]
    q = [0.2, 0.5, 0.3]
    kl_pq = 0.5 * math.log(0.5 / 0.2) + 0.3 * math.log(0.3 / 0.5) + 0.2 * math.log(0.2 / 0.3)
    # logits are log-probabilities plus an arbitrary per-position shift (softmax ignores it)
    target = torch.log(torch.tensor([[p, p]])) + 3.0
    masked = torch.log(torch.tensor([[q, p]])) - 1.0
    # position 0 has KL(p||q), position 1 has 0; mean over the 2 positions
    assert kl_recon_loss(target, masked).item() == pytest.approx(kl_pq / 2, rel=1e-5)

def test_kl_is_not_symmetric_and_uses_target_first():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.5, 0.3])
    kl_qp = float((q * (q / p).log()).sum())
    assert kl_recon_loss(p.log()[None], q.log()[None]).item() != pytest.approx(kl_qp, rel=1e-3)
    assert kl_recon_loss(q.log()[None], p.log()[None]).item() == pytest.approx(kl_qp, rel=1e-5)

def test_kl_zero_iff_equal_and_target_is_constant():
    torch.manual_seed(0)
    target = torch.randn(2, 3, 7, requires_grad=True)
    assert kl_recon_loss(target, target.detach().clone()).item() == pytest.approx(0.0, abs=1e-6)
    masked = (target.detach() + torch.randn(2, 3, 7)).requires_grad_(True)
    loss = kl_recon_loss(target, masked)
    assert loss.item() > 0
    loss.backward()
    assert target.grad is None
    assert masked.grad is not None and masked.grad.abs().sum() > 0

def test_mse_hand_computed_and_dispatch():
    target = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    masked = torch.tensor([[1.0, 0.0], [3.0, 5.0]])
    assert mse_recon_loss(target, masked).item() == pytest.approx((4 + 1) / 4)
    assert recon_loss(target, masked, "mse").item() == pytest.approx(1.25)
    assert recon_loss(target, masked, "kl").item() == pytest.approx(
        kl_recon_loss(target, masked).item()
    )

def test_recon_loss_rejects_unknown_kind():
    x = torch.zeros(2, 3)
    # ValueError from the dispatch; TypeError when runtime type checking (tests) catches it first
    with pytest.raises((ValueError, TypeError), match="kind"):
        recon_loss(x, x, "l1")  # type: ignore[arg-type]

def test_importance_hand_computed_p1_and_p2():
    # p=1: a -> (0.5+1)/2 + (0+0.25)/2 = 0.875; b -> (0.2+0.6)/2 = 0.4
    assert importance_minimality_loss(_ci(), p=1.0, eps=0.0).item() == pytest.approx(1.275)
    # p=2: a -> (0.25+1)/2 + (0+0.0625)/2 = 0.65625; b -> (0.04+0.36)/2 = 0.2
    assert importance_minimality_loss(_ci(), p=2.0, eps=0.0).item() == pytest.approx(0.85625)

def test_importance_eps_shifts_values():
    ci = {"a": torch.tensor([[0.0, 1.0]])}
    eps = 0.01
    expected = eps**0.5 + (1 + eps) ** 0.5
    assert importance_minimality_loss(ci, p=0.5, eps=eps).item() == pytest.approx(expected)

def test_importance_gradient_finite_at_zero_for_small_p():
    ci = torch.tensor([[0.0, 0.3]], requires_grad=True)
    importance_minimality_loss({"a": ci}, p=0.4, eps=1e-12).backward()
    assert torch.isfinite(ci.grad).all()

def test_frequency_hand_computed():
    # p=1, frequencies: a -> [0.75, 0.125], b -> [0.4]; ref_tokens = 4
    expected = (
        0.75 * math.log2(1 + 4 * 0.75)
        + 0.125 * math.log2(1 + 4 * 0.125)
        + 0.4 * math.log2(1 + 4 * 0.4)
    )
    loss = frequency_minimality_loss(_ci(), p=1.0, eps=0.0, ref_tokens=4)
    assert loss.item() == pytest.approx(expected)

def test_frequency_equals_paper_formula_when_tokens_match():
    torch.manual_seed(0)
    ci = torch.rand(4, 8, 5)  # B*T = 32 tokens
    for p in (2.0, 1.0, 0.4):
        ours = frequency_minimality_loss({"s": ci}, p=p, eps=0.0, ref_tokens=32)
        assert ours.item() == pytest.approx(_paper_frequency(ci, p).item(), rel=1e-5)

def test_minimality_is_batch_size_independent_unlike_raw_sums():
    torch.manual_seed(0)
    ci = torch.rand(2, 3, 5)
    ci4 = torch.cat([ci] * 4)  # same per-token distribution, 4x the tokens
    p = 0.9

    for loss_fn in (
        lambda c: importance_minimality_loss({"s": c}, p=p),
        lambda c: frequency_minimality_loss({"s": c}, p=p, eps=1e-12, ref_tokens=32768),
        lambda c: minimality_loss({"s": c}, p=p, eps=1e-12, freq_beta=0.5, ref_tokens=32768),
    ):
        assert loss_fn(ci4).item() == pytest.approx(loss_fn(ci).item(), rel=1e-5)

    # the paper's raw-sum forms change with the batch size
    raw_importance = lambda c: c.abs().pow(p).sum()  # noqa: E731
    assert raw_importance(ci4).item() == pytest.approx(4 * raw_importance(ci).item(), rel=1e-5)
    assert _paper_frequency(ci4, p).item() > 1.1 * _paper_frequency(ci, p).item()

def test_frequency_gradient_flows_through_both_factors():
    g, ref = 0.3, 10
    ci = torch.tensor([[g]], requires_grad=True)
    frequency_minimality_loss({"s": ci}, p=1.0, eps=0.0, ref_tokens=ref).backward()
    # d/dg [g log2(1 + R g)] = log2(1 + R g) + R g / ((1 + R g) ln 2)
    expected = math.log2(1 + ref * g) + ref * g / ((1 + ref * g) * math.log(2))
    assert ci.grad.item() == pytest.approx(expected, rel=1e-5)

def test_minimality_is_importance_plus_beta_frequency():
    imp = importance_minimality_loss(_ci(), p=1.0, eps=0.0).item()
    freq = frequency_minimality_loss(_ci(), p=1.0, eps=0.0, ref_tokens=4).item()
    fused = minimality_loss(_ci(), p=1.0, eps=0.0, freq_beta=0.5, ref_tokens=4).item()
    assert fused == pytest.approx(imp + 0.5 * freq)
    assert minimality_loss(_ci(), p=1.0, eps=0.0, freq_beta=0.0, ref_tokens=4).item() == (
        pytest.approx(imp)
    )

def test_minimality_rejects_empty():
    with pytest.raises(ValueError, match="at least one"):
        importance_minimality_loss({}, p=1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_target_distribution_kl_equals_kl_recon_loss(dtype):
    """The fused KL against a prepared target (one log_softmax per batch for every pass) gives
    kl_recon_loss's value and gradient, in fp32 and for bf16 logits (autocast's output)."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(3, 7, 50, generator=g) * 3
    x = (torch.randn(3, 7, 50, generator=g) * 3).to(dtype).requires_grad_(True)
    ref = kl_recon_loss(target, x)
    (g_ref,) = torch.autograd.grad(ref, x)
    prepared = prepare_target(target, "kl")
    fused = recon_loss(prepared, x, "kl")
    (g_fused,) = torch.autograd.grad(fused, x)
    assert g_fused.dtype == dtype
    torch.testing.assert_close(fused, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_fused.float(), g_ref.float(), rtol=1e-5, atol=1e-8)
    # Equal distributions: exactly zero gradient (the minimum), not rounding noise.
    same = target.clone().requires_grad_(True)
    (g_same,) = torch.autograd.grad(recon_loss(prepared, same, "kl"), same)
    assert g_same.abs().max() < 1e-7
    assert prepare_target(target, "mse") is target
    with pytest.raises(ValueError, match="TargetDistribution"):
        recon_loss(prepared, x, "mse")
