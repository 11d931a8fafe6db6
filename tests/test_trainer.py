"""End-to-end training on a tiny random HookedTransformer."""

import pytest
import torch

import tl_vpd
from tl_vpd import VPDConfig
from model_zoo import corpus, make_model, small_cfg



def test_training_reduces_loss_and_l0():
    model = make_model("gpt2")  # d_model 32: C=48 >= rank, so U V can equal W
    dec = tl_vpd.decompose(model, small_cfg(p_start=1.0, p_end=1.0), corpus())
    h = [m for m in dec.history if "stochastic" in m]
    assert h[-1]["faithfulness"] < 1e-6  # U V ≈ W
    assert h[-1]["l0"] < 0.6 * h[0]["l0"]  # causal importances sparsify
    assert h[-1]["minimality"] < h[0]["minimality"]
    # Without an adversary (whose attack strengthens as it trains) the total objective falls.
    cfg = small_cfg(adversary="none", coeff_adversarial=0.0, p_start=1.0, p_end=1.0)
    h = [m for m in tl_vpd.decompose(model, cfg, corpus()).history if "stochastic" in m]
    total = lambda m: 0.5 * m["stochastic"] + 1e-3 * m["minimality"] + 1e7 * m["faithfulness"]
    assert total(h[-1]) < 0.8 * total(h[0])
    toks = corpus(4, seed=1)
    ci = dec.causal_importance(toks)
    for site, g in ci.items():
        assert (g > 0).float().sum(-1).mean() < 48, site  # L0 below C at every site
    # unmasked (ones, Δ on) still equals the target exactly after training
    ones = {n: torch.ones(*toks.shape, c.C) for n, c in dec.components.items()}
    assert (dec.run_masked(toks, ones) - model(toks)).abs().max() < 1e-5

@pytest.mark.parametrize("adversary", ["fresh", "none"])
def test_other_adversaries_and_spd_preset(adversary):
    model = make_model("llama")
    cfg = small_cfg(steps=6, adversary=adversary, pgd_steps=2,
                    coeff_adversarial=0.5 if adversary != "none" else 0.0)
    dec = tl_vpd.decompose(model, cfg, corpus())
    assert len(dec.sites) == 14
    spd = VPDConfig.preset("spd", C=8, steps=4, batch_size=4, seq_len=12, progress=False, log_every=1)
    dec = tl_vpd.decompose(model, spd, corpus())
    assert "layerwise" in dec.history[-1] and "adversarial" not in dec.history[-1]

def test_deterministic():
    model = make_model("gpt2")
    cfg = small_cfg(steps=5, log_every=1, faithfulness_warmup_steps=3)
    a = tl_vpd.decompose(model, cfg, corpus())
    b = tl_vpd.decompose(model, cfg, corpus())
    assert a.history == b.history
    assert all(torch.equal(a.components[n].U, b.components[n].U) for n in a.sites)

def test_nan_loss_stops_with_last_good_state():
    model = make_model("gpt2")
    cfg = small_cfg(steps=10, faithfulness_warmup_steps=0)
    poisoned = {"done": False}

    def poison(step, metrics, dec):
        if step == 3 and not poisoned["done"]:
            poisoned["done"] = True
            with torch.no_grad():
                dec.components["blocks.0.attn.W_Q"].W[0, 0] = float("nan")  # corrupt the target copy

    with pytest.raises(tl_vpd.NonFiniteLossError, match="faithfulness.*step 3") as err:
        tl_vpd.decompose(model, cfg.replace(log_every=1), corpus(), callbacks=[poison])
    dec = err.value.decomposition
    assert all(torch.isfinite(c.U).all() and torch.isfinite(c.V).all() for c in dec.components.values())


def test_autocast_step_matches_fp32_step():
    """A bf16-autocast step computes the same losses as an fp32 one up to bf16 rounding, and
    really runs in bf16 (the values are not identical); parameters and their grads stay fp32."""
    model = make_model("gpt2")
    toks = corpus()
    steps = {}
    for ac in ("none", "bfloat16"):
        tr = tl_vpd.Trainer(model, small_cfg(autocast=ac, faithfulness_warmup_steps=0), toks)
        steps[ac] = tr.train_step(tr.stream.next())
        assert all(p.dtype == torch.float32 for p in tr.dec.parameters())
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in tr.dec.parameters())
    for k in ("stochastic", "adversarial", "minimality", "faithfulness", "l0"):
        a, b = steps["none"][k], steps["bfloat16"][k]
        assert abs(a - b) <= 0.03 * abs(a) + 1e-6, (k, a, b)
    assert steps["none"]["stochastic"] != steps["bfloat16"]["stochastic"]


def test_autocast_auto_is_bf16_for_language_models_only():
    from tl_vpd.toy_models import TMS

    lm = tl_vpd.Trainer(make_model("gpt2"), small_cfg(), corpus())
    toy = tl_vpd.Trainer(TMS(5, 2), small_cfg(seq_len=1), lambda n, g: torch.rand(n, 5, generator=g))
    assert lm.autocast and not toy.autocast
    assert not tl_vpd.Trainer(make_model("gpt2"), small_cfg(autocast="none"), corpus()).autocast


def test_warmup_runs_without_a_faithfulness_loss_and_takes_its_weight_decay():
    """The reference TMS recipe: warm-up (AdamW, weight decay 0.1), then no faithfulness loss."""
    model = make_model("gpt2")
    size = {}
    for wd in (0.0, 0.5):
        cfg = small_cfg(faithfulness_warmup_steps=20, coeff_faithfulness=0.0,
                        faithfulness_warmup_weight_decay=wd)
        tr = tl_vpd.Trainer(model, cfg, corpus())
        assert not tr.warmup_done
        tr._faithfulness_warmup()
        assert tr.warmup_done and tr.history[-1]["warmup/faithfulness"] < 1e-2
        size[wd] = sum(c.U.detach().norm() + c.V.detach().norm()
                       for c in tr.dec.components.values()).item()
    assert size[0.5] < 0.97 * size[0.0]
