"""The per-step loss recipe: which losses a step yields, in which order, with which share."""

import pytest
import torch

from tl_vpd import Decomposition, VPDConfig
from tl_vpd.adversary import PersistentSources
from tl_vpd.recipe import step_losses
from tl_vpd.distributed import Shard
from model_zoo import make_model, tokens


def _yielded(cfg, adversary=None, values=None):
    model = make_model("gpt2")
    dec = Decomposition.from_spec(model, cfg.spec, config=cfg)
    batch = tokens()
    with torch.no_grad():
        target, inputs = dec.run_target(batch)
    pre = {k: v.detach().requires_grad_(True) for k, v in dec.ci(inputs).pre.items()}
    out = []
    for name, coeff, loss in step_losses(cfg, dec, batch, target, pre, p=1.0, recon_kind="kl",
                                         generator=torch.Generator().manual_seed(0),
                                         shard=Shard(), adversary=adversary):
        assert loss.ndim == 0 and torch.isfinite(loss)
        (coeff * loss).backward()  # as the trainer does: each graph freed before the next
        out.append((name, coeff))
        if values is not None:
            values[name] = loss.item()
    return dec, out, pre


def _adversarial(adversary="fresh", **kw):
    """The adversarial loss of one step from deterministic sources (zeros: masks = CI; all-ones
    sources would start at the KL's minimum, where the exact gradient is 0), no stochastic loss."""
    cfg = VPDConfig(C=4, adversary=adversary, pgd_steps=1, pgd_init="zeros", coeff_stochastic=0.0,
                    ppgd_inner_steps=1, **kw)
    ps = (PersistentSources(cfg.ppgd_scope, cfg.ppgd_lr, cfg.ppgd_betas, init="zeros")
          if adversary == "persistent" else None)
    values = {}
    _yielded(cfg, ps, values)
    return values["adversarial"]


@pytest.mark.parametrize("adversary", ["fresh", "persistent"])
def test_adversarial_routing(adversary):
    """"all" masks every site in the adversarial pass whatever the stochastic routing; "same"
    routes it as the stochastic loss (the VPD paper)."""
    subset = dict(routing="uniform_k_subset")
    every = _adversarial(adversary, routing="all")
    assert _adversarial(adversary, **subset, adversarial_routing="all") == every
    assert _adversarial(adversary, routing="all", adversarial_routing="same") == every
    assert _adversarial(adversary, **subset, adversarial_routing="same") != every


def test_vpd_recipe_order_and_coefficients():
    cfg = VPDConfig(C=4, adversary="fresh", pgd_steps=1, n_mask_samples=2)
    dec, out, pre = _yielded(cfg)
    assert out == [("faithfulness", cfg.coeff_faithfulness), ("minimality", cfg.coeff_minimality),
                   ("stochastic", 0.25), ("stochastic", 0.25), ("adversarial", 0.5)]
    assert all(v.grad is not None for v in pre.values())  # the CI leaf accumulates gradient


def test_spd_recipe_has_one_layerwise_loss_per_site():
    cfg = VPDConfig.preset("spd", C=4)
    dec, out, _ = _yielded(cfg)
    names = [n for n, _ in out]
    assert names[:3] == ["faithfulness", "minimality", "stochastic"]
    assert names[3:] == ["layerwise"] * len(dec.sites)
    assert all(c == 1.0 / len(dec.sites) for n, c in out if n == "layerwise")


def test_outer_pass_leaves_the_ascent_gradient_on_persistent_sources(monkeypatch):
    """``ppgd_inner_steps: 0`` ascends on the gradient the outer adversarial pass leaves on the
    sources (no extra forward). That gradient must be the inner step's own direction: the
    frozen-CI reconstruction loss's gradient at the same sources, times the loss's coefficient."""
    cfg = VPDConfig(C=4, adversary="persistent", routing="all", coeff_stochastic=0.0,
                    ppgd_inner_steps=1)
    # lr 0: the inner ascent leaves the sources where they are
    ps = PersistentSources(cfg.ppgd_scope, 0.0, cfg.ppgd_betas, init="random")
    inner = {}
    real_ascend = PersistentSources.ascend

    def recording_ascend(self):
        inner.update({k: s.grad.clone() for k, s in self.sources.items()})
        real_ascend(self)

    monkeypatch.setattr(PersistentSources, "ascend", recording_ascend)
    start = {}
    real_current = PersistentSources.current

    def recording_current(self, ci, generator=None):
        out = real_current(self, ci, generator)
        start.setdefault("s", {k: s.detach().clone() for k, s in self.sources.items()})
        return out

    monkeypatch.setattr(PersistentSources, "current", recording_current)
    _yielded(cfg, ps)
    assert set(inner) == set(ps.sources) and inner
    for k, s in ps.sources.items():
        assert torch.equal(s.detach(), start["s"][k])  # the inner step did not move them
        assert s.grad is not None and inner[k].abs().sum() > 0
        torch.testing.assert_close(s.grad, cfg.coeff_adversarial * inner[k], rtol=1e-5, atol=1e-8)
