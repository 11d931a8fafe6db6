"""Mask sampling, routing, and the fixed masks of evaluation and analysis (pure functions on tiny tensors)."""

import pytest
import torch

from tl_vpd import Decomposition
from tl_vpd.masking import (
    ablation_masks,
    delta_masks,
    masks_from_sources,
    ones_masks,
    rounded_masks,
    sample_routing,
    sample_sources,
    stacked_ablation_masks,
    zero_delta_sources,
    zero_masks,
)
from model_zoo import make_model


def test_masks_between_ci_and_one():
    g = torch.Generator().manual_seed(0)
    ci = {"a": torch.rand(4, 5, 7, generator=g), "b": torch.rand(4, 5, 3, generator=g)}
    masks, dmasks = masks_from_sources(ci, sample_sources(ci, g))
    for k in ci:
        assert (masks[k] >= ci[k] - 1e-7).all() and (masks[k] <= 1 + 1e-7).all()
        assert dmasks[k].shape == (4, 5) and (dmasks[k] >= 0).all() and (dmasks[k] <= 1).all()
    # g = 1 pins the mask to 1 whatever the source; g = 0 lets the source through.
    ones = {"a": torch.ones(2, 3)}
    m, _ = masks_from_sources(ones, {"a": torch.zeros(2, 4)})
    assert torch.equal(m["a"], torch.ones(2, 3))
    src = torch.rand(2, 4, generator=g)
    m, md = masks_from_sources({"a": torch.zeros(2, 3)}, {"a": src})
    assert torch.equal(m["a"], src[:, :3]) and torch.equal(md["a"], src[:, 3])

def test_uniform_k_subset_routing():
    g = torch.Generator().manual_seed(0)
    sites = [f"s{i}" for i in range(6)]
    r = sample_routing(sites, (200, 50), "uniform_k_subset", g)
    counts = torch.stack([r[s] for s in sites], -1).sum(-1)
    assert counts.min() >= 1 and counts.max() <= 6
    # k is uniform on 1..6, so each count appears about 1/6 of the time
    freq = torch.bincount(counts.flatten(), minlength=7)[1:].float() / counts.numel()
    assert (freq - 1 / 6).abs().max() < 0.02
    # each site is routed with probability E[k]/n = 3.5/6
    assert abs(r["s0"].float().mean().item() - 3.5 / 6) < 0.02
    assert sample_routing(sites, (2, 3), "all") is None
    masks, dmasks = masks_from_sources({"s0": torch.zeros(200, 50, 2)}, {"s0": torch.zeros(3)}, r)
    assert torch.equal(masks["s0"][~r["s0"]], torch.ones_like(masks["s0"][~r["s0"]]))
    assert (dmasks["s0"][~r["s0"]] == 1).all() and (dmasks["s0"][r["s0"]] == 0).all()


def test_routing_rejects_unknown_kinds():
    with pytest.raises((ValueError, TypeError), match="routing 'layerwise'"):
        sample_routing(["a"], (2, 3), "layerwise")


def test_zero_delta_sources():
    src = {"a": torch.rand(2, 3, 5)}
    out = zero_delta_sources(src)["a"]
    assert torch.equal(out[..., :-1], src["a"][..., :-1]) and (out[..., -1] == 0).all()


def test_fixed_masks():
    ci = {"a": torch.tensor([[0.0, 0.5, 1.0]]), "b": torch.rand(2, 4, 3, dtype=torch.float64)}
    assert torch.equal(ones_masks(ci)["a"], torch.ones(1, 3))
    assert torch.equal(zero_masks(ci)["a"], torch.zeros(1, 3))
    assert ones_masks(ci)["b"].dtype == torch.float64 and zero_masks(ci)["b"].shape == (2, 4, 3)
    assert torch.equal(rounded_masks(ci, 0.4)["a"], torch.tensor([[0.0, 1.0, 1.0]]))
    assert torch.equal(delta_masks(ci, 0.0)["b"], torch.zeros(2, 4, dtype=torch.float64))
    assert torch.equal(delta_masks(ci, 1.0)["a"], torch.ones(1))


def test_ablation_masks():
    dec = Decomposition.from_model(make_model("gpt2"), C=4)
    comps = dec.components
    m = ablation_masks(comps, {"blocks.0.attn.W_Q": {1: 0.0, 3: 0.5}}, (2, 5))
    assert list(m) == ["blocks.0.attn.W_Q"] and m["blocks.0.attn.W_Q"].shape == (2, 5, 4)
    expected = torch.ones(2, 5, 4)
    expected[..., 1] = 0.0
    expected[..., 3] = 0.5
    assert torch.equal(m["blocks.0.attn.W_Q"], expected)
    g = torch.rand(2, 5, 4)  # per-token alpha: ablate as far as the CI allows
    m = ablation_masks(comps, {"blocks.1.mlp.W_in": {2: g[..., 2]}}, g.shape[:-1])
    assert torch.equal(m["blocks.1.mlp.W_in"][..., 2], g[..., 2])
    assert (m["blocks.1.mlp.W_in"][..., [0, 1, 3]] == 1).all()


def test_stacked_ablation_masks():
    dec = Decomposition.from_model(make_model("gpt2"), C=4)
    cands = [("blocks.0.attn.W_Q", 1), ("blocks.1.mlp.W_in", 0), ("blocks.0.attn.W_Q", 3)]
    m = stacked_ablation_masks(dec.components, cands, (2, 5))
    assert set(m) == {"blocks.0.attn.W_Q", "blocks.1.mlp.W_in"}
    q = m["blocks.0.attn.W_Q"]
    assert q.shape == (6, 5, 4)
    assert (q[0:2, :, 1] == 0).all() and (q[4:6, :, 3] == 0).all()
    assert q.sum() == 6 * 5 * 4 - 2 * 2 * 5
    mlp = m["blocks.1.mlp.W_in"]
    assert (mlp[2:4, :, 0] == 0).all() and mlp.sum() == 6 * 5 * 4 - 2 * 5
