"""The toys' fast SPD step: the stacked layerwise forward (one pass for every site) and the
fused optimiser compute what the straightforward per-site loop and the default AdamW do."""

import pytest
import torch

import tl_vpd
from tl_vpd import Decomposition
from tl_vpd.distributed import Shard
from tl_vpd.importance import lower_leaky_sigmoid
from tl_vpd.layerwise import stacked_layerwise_output
from tl_vpd.losses import mse_recon_loss
from tl_vpd.masking import masks_from_sources, sample_sources, zero_delta_sources
from tl_vpd.recipe import step_losses
from tl_vpd.toy_models import TMS, ResidualMLP, toy_config
from tl_vpd.toy_models._runtime import single_threaded


@pytest.fixture(autouse=True)
def _one_thread():
    with single_threaded():
        yield


def _toy(name):
    model = {"tms_id": TMS(5, 2, identity=True, seed=0),
             "resid_mlp": ResidualMLP(n_features=12, d_embed=30, d_mlp=6, n_layers=2, seed=0)}[name]
    for p in model.parameters():
        p.requires_grad_(False)
    lo = -1.0 if name == "resid_mlp" else 0.0
    x = torch.empty(32, model.n_features).uniform_(lo, 1.0, generator=torch.Generator().manual_seed(1))
    return model, x


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("name", ["tms_id", "resid_mlp"])
def test_stacked_forward_is_one_pass_per_site(name):
    """Copy j of the stacked output is the model with site j alone masked (outputs and the
    gradients of the mean loss, into U, V and the masks)."""
    model, x = _toy(name)
    dec = Decomposition.from_model(model, C=7, seed=0)
    g = torch.Generator().manual_seed(2)
    masks = {s: torch.rand(32, 7, generator=g).requires_grad_() for s in dec.sites}
    dmasks = {s: torch.rand(32, generator=g) for s in dec.sites}
    target = model(x)
    params = [p for c in dec.components.values() for p in (c.U, c.V)] + list(masks.values())

    out = stacked_layerwise_output(dec, x, masks, dmasks)
    n = len(dec.sites)
    assert out.shape == (n * 32, *target.shape[1:])
    refs = [dec.run_masked(x, {s: masks[s]}, {s: dmasks[s]}) for s in dec.sites]
    for j, ref in enumerate(refs):
        torch.testing.assert_close(out[32 * j: 32 * (j + 1)], ref, rtol=1e-6, atol=1e-6)
    stacked = _grads(mse_recon_loss(target.repeat(n, 1), out), params)
    loop = _grads(sum(mse_recon_loss(target, r) for r in refs) / n, params)
    for a, b in zip(stacked, loop):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def _reference_layerwise(dec, cfg, batch, target, pre, generator):
    """The SPD layerwise loss as the paper writes it: per site, fresh sources, masks from the
    lower-leaky CI (and Δ's own source where the config has a Δ-component, as the TMS toys'
    do), a forward with that site alone masked; the mean over sites. Draws follow the
    recipe's order (the stochastic loss's sources come first)."""
    sample_sources(pre, generator)  # the stochastic loss's draw
    losses = []
    for site in dec.sites:
        src = sample_sources({site: pre[site]}, generator)
        src = src if cfg.use_delta_component else zero_delta_sources(src)  # SPD: no Δ
        g = {site: lower_leaky_sigmoid(pre[site], dec.leaky_alpha)}
        m, dm = masks_from_sources(g, src)
        losses.append(mse_recon_loss(target, dec.run_masked(batch, m, dm)))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("name", ["tms_id", "resid_mlp"])
def test_recipe_layerwise_loss_and_gradients_match_the_per_site_loop(name):
    model, x = _toy(name)
    cfg = toy_config("tms_5-2-id" if name == "tms_id" else "resid_mlp2", "spd", C=7,
                     batch_size=32)
    dec = Decomposition.from_spec(model, cfg.spec, config=cfg)
    with torch.no_grad():
        target, inputs = dec.run_target(x)
    pre = {k: v.detach().requires_grad_(True) for k, v in dec.ci(inputs).pre.items()}
    params = [p for c in dec.components.values() for p in (c.U, c.V)] + list(pre.values())

    found = {n: (c, loss) for n, c, loss in step_losses(
        cfg, dec, x, target, pre, p=2.0, recon_kind="mse",
        generator=torch.Generator().manual_seed(5), shard=Shard(), adversary=None)}
    coeff, loss = found["layerwise"]
    assert coeff == cfg.coeff_layerwise
    ref = _reference_layerwise(dec, cfg, x, target, pre, torch.Generator().manual_seed(5))
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-9)
    for a, b in zip(_grads(loss, params), _grads(ref, params)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)


def test_fused_optimizer_matches_the_default_adamw():
    """Toys train with the fused AdamW; a few steps equal the default AdamW's to fp32 rounding."""
    model, _ = _toy("tms_id")
    cfg = toy_config("tms_5-2-id", "spd", C=7, batch_size=64, faithfulness_warmup_steps=0)
    data = tl_vpd.toy_models.tms_data(5)
    runs = []
    for fused in (True, False):
        tr = tl_vpd.Trainer(model, cfg, data)
        assert tr.optimizer.defaults["fused"] is True
        if not fused:
            tr.optimizer = torch.optim.AdamW(
                [{"params": tr.component_params}, {"params": tr.ci_params}],
                lr=cfg.lr, weight_decay=cfg.weight_decay)
        metrics = [tr.train_step(tr.stream.next()) for _ in range(3)]
        runs.append((metrics, [p.detach().clone() for p in tr.dec.parameters()]))
    (m_fused, p_fused), (m_plain, p_plain) = runs
    for a, b in zip(p_fused, p_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert m_fused[0] == m_plain[0]  # the first step's losses come before any update
