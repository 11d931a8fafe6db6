"""The adversary: fresh PGD, initial sources, persistent sources."""

import pytest
import torch

import tl_vpd
from model_zoo import corpus, make_model, small_cfg
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


def test_set_lr_reaches_the_optimizer():
    ci = {"a": torch.zeros(2, 3, 4)}
    ps = PersistentSources("shared", lr=0.05, betas=(0.5, 0.99))
    ps.set_lr(0.2)  # before the optimiser exists: it is built with the new lr
    ps.current(ci)
    assert ps.optimizer.param_groups[0]["lr"] == 0.2
    ps.set_lr(0.0)
    assert ps.optimizer.param_groups[0]["lr"] == 0.0


def test_sources_lr_warmup_resumes_exactly(tmp_path):
    """The sources' lr at step k is a function of k alone: a run interrupted during the warm-up
    and resumed equals an uninterrupted one."""
    model = make_model("gpt2")
    cfg = small_cfg(steps=8, log_every=1, checkpoint_every=3, faithfulness_warmup_steps=3,
                    ppgd_lr_warmup_frac=0.75, adversarial_routing="all")
    full = tl_vpd.decompose(model, cfg.replace(checkpoint_every=0), corpus())

    def interrupt(step, metrics, dec):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tl_vpd.decompose(model, cfg, corpus(), run_dir=tmp_path, callbacks=[interrupt])
    resumed = tl_vpd.decompose(model, cfg, corpus(), run_dir=tmp_path, resume=True)
    steps = [m for m in full.history if "ppgd_lr" in m]
    assert [m["ppgd_lr"] for m in steps] == [pytest.approx(0.01 * k / 6) for k in range(6)] + [
        pytest.approx(0.01)] * 2
    assert len(full.history) == len(resumed.history)
    for a, b in zip(full.history, resumed.history):
        assert a.keys() == b.keys()
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-6 * max(1.0, abs(a[k])), (a.get("step"), k)
    for n in full.sites:
        assert torch.allclose(full.components[n].U, resumed.components[n].U, atol=1e-6)


def test_language_model_training_uses_fused_adam_and_matches_the_loop():
    """The decomposition's AdamW and the persistent sources' Adam run the fused kernel on a
    CPU; three persistent-PGD steps give the per-tensor loop's parameters and sources to fp32
    rounding, and the same first losses."""
    cfg = small_cfg(steps=10, faithfulness_warmup_steps=0, adversary="persistent",
                    ppgd_inner_steps=2)
    runs = []
    for fused in (True, False):
        tr = tl_vpd.Trainer(make_model("llama"), cfg, corpus())
        assert tr.optimizer.defaults["fused"] is True
        if not fused:
            tr.optimizer = torch.optim.AdamW(
                [{"params": tr.component_params}, {"params": tr.ci_params}],
                lr=cfg.lr, weight_decay=cfg.weight_decay)
            tr.adversary._adam = lambda ps=tr.adversary: torch.optim.Adam(
                list(ps.sources.values()), lr=ps.lr, betas=ps.betas, maximize=True)
        metrics = [tr.train_step(tr.stream.next()) for _ in range(3)]
        assert tr.adversary.optimizer.defaults["fused"] is (True if fused else None)
        runs.append((metrics, [p.detach().clone() for p in tr.dec.parameters()],
                     [s.detach().clone() for s in tr.adversary.sources.values()]))
    (m_fused, p_fused, s_fused), (m_plain, p_plain, s_plain) = runs
    for a, b in zip(p_fused + s_fused, p_plain + s_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert m_fused[0] == m_plain[0]
