"""Mask sampling, routing, and the adversary (pure functions on tiny tensors)."""

import torch

from tl_vpd.adversary import PersistentSources, fresh_pgd, init_sources
from tl_vpd.importance import lower_leaky_sigmoid, upper_leaky_sigmoid
from tl_vpd.masking import masks_from_sources, sample_routing, sample_sources


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


def test_leaky_sigmoids():
    z = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    lo = lower_leaky_sigmoid(z, 0.01)
    assert torch.equal(lo, torch.tensor([0.0, 0.5, 1.0]))
    lo.backward(torch.tensor([-1.0, -1.0, -1.0]))  # descent would raise z: leak below 0
    assert torch.allclose(z.grad, torch.tensor([-0.01, -1.0, 0.0]))
    z.grad = None
    lower_leaky_sigmoid(z, 0.01).backward(torch.tensor([1.0, 1.0, 1.0]))  # would lower z: blocked
    assert torch.allclose(z.grad, torch.tensor([0.0, 1.0, 0.0]))
    up = upper_leaky_sigmoid(z.detach(), 0.01)
    assert torch.allclose(up, torch.tensor([0.0, 0.5, 1.01]))


def test_fresh_pgd_ascends():
    target = torch.tensor([0.3, -0.7, 0.2])

    def loss_fn(s):
        return ((s["a"] - target) ** 2).sum()

    start = {"a": torch.full((3,), 0.5)}
    found = fresh_pgd(loss_fn, start, n_steps=10, step_size=0.1)
    assert loss_fn(found) >= loss_fn(start)
    assert (found["a"] >= 0).all() and (found["a"] <= 1).all()
    # the maximiser of a convex function on the box is a corner far from target
    assert torch.allclose(found["a"], torch.tensor([1.0, 1.0, 1.0]))


def test_init_sources_shapes():
    ci = {"a": torch.rand(2, 3, 4)}
    assert init_sources(ci, "per_token", "random")["a"].shape == (2, 3, 5)
    assert torch.equal(init_sources(ci, "shared", "ones")["a"], torch.ones(5))


def test_persistent_sources_ascend_and_persist():
    ci = {"a": torch.zeros(2, 3, 4)}
    ps = PersistentSources("per_token", lr=0.05, betas=(0.5, 0.99), init="random")
    g = torch.Generator().manual_seed(0)

    def loss_fn(s):
        return (s["a"] ** 2).sum()  # maximised by pushing sources to 1

    first = ps.current(ci, g)["a"].detach().clone()
    before = loss_fn({"a": first})
    ps.warmup(loss_fn, ci, n_steps=5, generator=g)
    after = loss_fn(ps.current(ci, g))
    assert after > before
    again = ps.current(ci, g)["a"]
    assert again is ps.sources["a"]  # persists across calls
    state = ps.state_dict()
    ps2 = PersistentSources("per_token", lr=0.05, betas=(0.5, 0.99))
    ps2.load_state_dict(state)
    assert torch.equal(ps2.sources["a"], ps.sources["a"])
    bank = PersistentSources("bank", lr=0.05, betas=(0.5, 0.99), bank_size=3)
    assert bank.current(ci, g)["a"].shape == (2, 1, 5)
