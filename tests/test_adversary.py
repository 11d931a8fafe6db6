"""The adversary: fresh PGD, initial sources, persistent sources."""

import pytest
import torch

from tl_vpd.adversary import PersistentSources, fresh_pgd, init_sources


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


@pytest.mark.parametrize(("init", "value"), [("ones", 1.0), ("zeros", 0.0)])
def test_persistent_sources_honour_init(init, value):
    ci = {"a": torch.zeros(2, 3, 4)}
    ps = PersistentSources("per_token", lr=0.05, betas=(0.5, 0.99), init=init)
    assert torch.equal(ps.current(ci)["a"].detach(), torch.full((2, 3, 5), value))
    with pytest.raises(ValueError, match="pgd init"):
        PersistentSources("shared", lr=0.05, betas=(0.5, 0.99), init="half")
