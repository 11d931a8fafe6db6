"""Toy targets with known ground truth and recovery by the engine (the metrics' unit tests:
test_metrics.py).

Fast tier: the engine's exactness on every toy target, and short decompositions (TMS 5-2,
TMS 5-2 + identity, the 1-layer residual MLP's W_in, the cancellation toy);
slow tier (``-m slow``): TMS 40-10, VPD on TMS 5-2 + identity and the residual MLP's W_out at
the CPU setting.
Longer reproductions live in ``benchmarks/reproduce_spd_toys.py``.
"""

import pytest
import torch

from tl_vpd import Decomposition
from tl_vpd.toy_models import metrics as M
from tl_vpd.toy_models import (
    TMS,
    CancellationData,
    CancellationToy,
    ResidualMLP,
    SparseFeatures,
    ground_truth_components,
    pair_indices,
    reproduce,
    resid_mlp_labels,
    toy_config,
    train_tms,
    with_identity,
)
from tl_vpd.toy_models._runtime import single_threaded


@pytest.fixture(autouse=True)
def _one_thread():
    # Toy tensors are tiny; on a shared 2-core machine one thread is many times faster.
    with single_threaded():
        yield


# --------------------------------------------------------------------------- targets
def _targets():
    return {
        "tms": TMS(5, 2, seed=0),
        "tms_id": TMS(5, 2, identity=True, seed=0),
        "resid_mlp": ResidualMLP(n_features=12, d_embed=30, d_mlp=6, n_layers=2, seed=0),
        "cancellation": CancellationToy(n_pairs=2, n_features=3),
    }


EXPECTED_SITES = {
    "tms": ["linear1", "linear2"],
    "tms_id": ["linear1", "hidden_layers.0", "linear2"],
    "resid_mlp": ["blocks.0.mlp.W_in", "blocks.0.mlp.W_out", "blocks.1.mlp.W_in",
                  "blocks.1.mlp.W_out"],
    "cancellation": ["linear"],
}


def _inputs(name, model, n=16):
    g = torch.Generator().manual_seed(3)
    if name == "cancellation":
        return CancellationData(model.n_pairs, model.n_features, p=0.5)(n, g)
    lo = -1.0 if name == "resid_mlp" else 0.0
    return SparseFeatures(model.n_features, 0.5, lo, 1.0)(n, g)


@pytest.mark.parametrize("name", list(EXPECTED_SITES))
def test_sites_are_the_matrices_the_forward_uses(name):
    model = _targets()[name]
    dec = Decomposition.from_model(model, C=7)
    assert dec.sites == EXPECTED_SITES[name]
    x = _inputs(name, model)
    _, captured = dec.run_target(x)
    outs = {}
    specs = {s.name: s for s in model.vpd_sites()}
    hooks = [(specs[n].output_hook, lambda act, hook, n=n: outs.__setitem__(n, act)) for n in dec.sites]
    model.run_with_hooks(x, fwd_hooks=hooks)
    for n in dec.sites:  # the output hook carries exactly x @ W.T + b
        b = specs[n].get_bias()
        expected = captured[n] @ dec.target_weight(n).T + (0 if b is None else b)
        assert torch.allclose(outs[n], expected, atol=1e-6), n
    if name.startswith("tms"):  # linear2 is tied to linear1ᵀ
        assert torch.equal(dec.target_weight("linear2"), model.linear1.W.T)


@pytest.mark.parametrize("name", list(EXPECTED_SITES))
def test_all_ones_masks_reproduce_the_target_exactly(name):
    model = _targets()[name]
    dec = Decomposition.from_model(model, C=7, ci_fn="mlp", ci_hidden=4)
    x = _inputs(name, model)
    ref = model(x)
    ones = {n: torch.ones(x.shape[0], 7) for n in dec.sites}
    dones = {n: torch.ones(x.shape[0]) for n in dec.sites}
    for impl in ("factorized", "materialized"):
        assert (dec.run_masked(x, ones, dones, impl=impl) - ref).abs().max() <= 1e-5, impl
    assert (dec.run_masked(x, ones) - ref).abs().max() <= 1e-5  # Δ mask defaults to 1
    zeros = {n: torch.zeros_like(m) for n, m in ones.items()}
    dzeros = {n: torch.zeros_like(m) for n, m in dones.items()}
    assert (dec.run_masked(x, zeros, dzeros) - ref).abs().max() > 1e-2  # masks do act
    g = dec.causal_importance(x)
    assert set(g) == set(dec.sites) and all(v.shape == (x.shape[0], 7) for v in g.values())


def test_target_training_is_deterministic_and_learns():
    a, b = train_tms(5, 2, seed=3, steps=300), train_tms(5, 2, seed=3, steps=300)
    assert torch.equal(a.W, b.W) and not a.W.requires_grad
    assert not torch.equal(a.W, train_tms(5, 2, seed=4, steps=300).W)
    x = 0.75 * torch.eye(5)
    assert (a(x) - x).pow(2).mean() < (TMS(5, 2, seed=3)(x) - x).pow(2).mean()


def test_identity_variant_target_is_the_plain_target_with_the_identity_inserted():
    # benchmarks/reproduce_spd_toys.py trains each seed's TMS once and decomposes both variants.
    plain = train_tms(5, 2, seed=2, steps=200)
    trained = train_tms(5, 2, identity=True, seed=2, steps=200)
    shared = with_identity(plain)
    assert shared.identity and torch.equal(shared.hidden_layers[0].W, torch.eye(2))
    assert torch.equal(shared.linear1.W, trained.linear1.W)
    assert torch.equal(shared.linear2.b, trained.linear2.b)
    assert not any(q.requires_grad for q in shared.parameters())
    x = SparseFeatures(5, 0.3)(64, torch.Generator().manual_seed(0))
    assert torch.equal(shared(x), plain(x))
    with pytest.raises(ValueError, match="without the identity"):
        with_identity(shared)


def test_resid_mlp_labels_and_data_ranges():
    x = torch.tensor([[-0.5, 0.0, 0.7]])
    assert torch.allclose(resid_mlp_labels(x), torch.tensor([[-0.5, 0.0, 1.4]]))
    data = SparseFeatures(100, 0.01, -1.0, 1.0)
    batch = data(4096, torch.Generator().manual_seed(0))
    assert batch.min() >= -1 and batch.max() <= 1
    assert abs((batch != 0).float().mean().item() - 0.01) < 0.002


def test_unknown_experiment_and_method_are_refused():
    with pytest.raises(ValueError, match="unknown toy experiment"):
        toy_config("tms_5-3")
    with pytest.raises(ValueError, match="method"):
        toy_config("tms_5-2", method="apd")


# --------------------------------------------------------------------------- recovery
def test_tms_5_2_recovers_the_columns_of_W():
    target, dec = reproduce("tms_5-2", seed=0, quick=True, method="spd")
    assert (target.W.norm(dim=0) > 0.5).all(), "the target must represent all 5 features"
    c = dec.components["linear1"]
    assert M.mmcs(target.W, c.U, c.V) >= 0.99
    assert 0.95 <= M.ml2r(target.W, c.U, c.V) <= 1.05
    ci = M.one_hot_causal_importance(dec, 5)["linear1"]
    assert M.identity_ci_error(ci) == 0


def test_reproduce_decomposes_a_given_target_without_training_it():
    # benchmarks/reproduce_spd_toys.py trains each (model, seed) once for both methods.
    target = TMS(5, 2, seed=0)
    for p in target.parameters():
        p.requires_grad_(False)
    before = target.W.clone()
    got, dec = reproduce("tms_5-2", quick=True, method="spd", target=target, steps=2,
                         faithfulness_warmup_steps=0)
    assert got is target and dec.model is target
    assert torch.equal(target.W, before)  # untrained: train_tms would have moved W


@pytest.mark.slow
def test_tms_40_10_recovers_the_columns_of_W_at_the_cpu_setting():
    """benchmarks/reproduce_spd_toys.py's CPU setting (~2.5 min on one thread): seed 1, the
    weakest of three, measured MMCS 0.997, ML2R 1.010, 40 live; the preset before the Δ-component
    and fan-in init gave 0.91, the same schedule at lr 7e-3 0.977."""
    target, dec = reproduce("tms_40-10", seed=1, method="spd", steps=4000, batch_size=512, lr=1e-2)
    c = dec.components["linear1"]
    assert M.mmcs(target.W, c.U, c.V) >= 0.99
    assert 0.95 <= M.ml2r(target.W, c.U, c.V) <= 1.05


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_vpd_tms_5_2_identity_recovers_the_columns_of_W_at_the_cpu_setting(seed):
    """VPD at benchmarks/reproduce_spd_toys.py's CPU schedule for this row (~1 min per seed on
    one thread), with the preset's two adversary ascents per step (the benchmark's ``VPD_CPU``
    makes one; both measured 1.000 on seeds 0-2). With the VPD paper's 0.5 + 0.5 reconstruction weights and a Δ-component seed 1 kept 4 live
    ``linear1`` subcomponents for 5 features (ML2R 0.60); the toy preset's 1 + 1 without Δ
    measured 1.000. The columns are matched to live subcomponents, as the benchmark does: on
    seed 0 a dead one (norm ~1e-3) can point along a 2-d column as exactly as the live one."""
    target, dec = reproduce("tms_5-2-id", seed=seed, method="vpd", steps=3000, batch_size=1024,
                            lr=5e-3, lr_final_frac=0.1)
    c = dec.components["linear1"]
    x = SparseFeatures(5, 0.05)(2048, torch.Generator().manual_seed(9))
    ci = dec.causal_importance(torch.cat([x, 0.75 * torch.eye(5)]))
    live = M.alive_subcomponents(ci["linear1"], 0.1)
    assert M.mmcs(target.W, c.U, c.V, live) >= 0.99
    assert 0.95 <= M.ml2r(target.W, c.U, c.V, live) <= 1.05
    assert int(live.sum()) == 5
    assert int(M.alive_subcomponents(ci["hidden_layers.0"], 0.1).sum()) == target.n_hidden


def test_resid_mlp1_W_in_has_one_subcomponent_per_feature_quickly():
    """600 steps at batch 512 and lr 1e-2 (measured: 105 live W_in subcomponents, identity-CI
    error 12; the quick preset's 300 steps at batch 256 give an error of 3129)."""
    target, dec = reproduce("resid_mlp1", seed=0, quick=True, method="spd", steps=600,
                            batch_size=512, lr=1e-2, coeff_minimality=2e-5)
    ci = M.one_hot_causal_importance(dec, target.n_features)["blocks.0.mlp.W_in"]
    assert 100 <= int(M.alive_subcomponents(ci, 0.1).sum()) <= 110
    assert M.identity_ci_error(ci) <= 40


@pytest.mark.slow
def test_resid_mlp1_W_out_is_one_subcomponent_per_neuron_at_the_cpu_setting():
    """benchmarks/reproduce_spd_toys.py's CPU setting (~4 min on one thread). SPD paper Fig. 8:
    W_in one subcomponent per feature, W_out "the correct number of subcomponents (50)". Here
    the 50 read one neuron each (seed 0 measured: 53 live W_out, 50 of them within cos 0.98 of
    one neuron; the preset with a faithfulness loss kept 75, most reading several neurons)."""
    target, dec = reproduce("resid_mlp1", seed=0, method="spd", steps=6000, batch_size=512,
                            lr=5e-3, coeff_minimality=2e-5)
    ci = M.one_hot_causal_importance(dec, target.n_features)
    g_in, g_out = ci["blocks.0.mlp.W_in"], ci["blocks.0.mlp.W_out"]
    assert int(M.alive_subcomponents(g_in, 0.1).sum()) == 100
    assert M.identity_ci_error(g_in) <= 2
    live = M.alive_subcomponents(g_out, 0.1)
    assert int(live.sum()) <= 55
    cos, neuron = M.axis_alignment(dec.components["blocks.0.mlp.W_out"].V)
    one = live & (cos >= 0.9)
    assert len(set(neuron[one].tolist())) == target.d_mlp


def test_tms_identity_site_has_exactly_n_hidden_live_subcomponents():
    target, dec = reproduce("tms_5-2-id", seed=0, quick=True, method="spd")
    x = SparseFeatures(5, 0.05)(2048, torch.Generator().manual_seed(9))
    ci = dec.causal_importance(torch.cat([x, 0.75 * torch.eye(5)]))["hidden_layers.0"]
    assert int(M.alive_subcomponents(ci, 0.1).sum()) == target.n_hidden
    # ... and the live ones sum to the identity.
    comp = dec.components["hidden_layers.0"]
    live = M.alive_subcomponents(ci, 0.1)
    assert torch.allclose(comp.U[:, live] @ comp.V[live], torch.eye(2), atol=0.05)


def test_cancellation_stochastic_masks_miss_the_pair_adversarial_masks_do_not():
    target = CancellationToy(n_pairs=1, n_features=4)
    assert torch.equal(torch.mm(*ground_truth_components(target)), target.W)
    x = CancellationData(1, 4)(1024, torch.Generator().manual_seed(11))
    assert target(x)[:, 0].abs().max() == 0  # y cancels on every input
    pair = pair_indices(target)
    results = {}
    for method in ("spd", "vpd"):
        _, dec = reproduce("cancellation", quick=True, method=method)
        g = dec.causal_importance(x)["linear"]
        err = M.single_ablation_errors(dec, x)["linear"]
        results[method] = (g[:, pair].mean().item(), err[pair].max().item(),
                           g[:, :4][x[:, 1:] > 0].mean().item())
    spd_g, spd_err, spd_feat = results["spd"]
    vpd_g, vpd_err, vpd_feat = results["vpd"]
    # SPD: sparse-looking (g ≈ 0 for both) and wrong: ablating one alone moves y by the full 3.
    assert spd_g < 0.05 and spd_err > 2.8
    # ... while it does keep the ordinary feature mechanisms (the control).
    assert spd_feat > 0.4
    # VPD raises g for the pair, so the worst single ablation allowed by the CI is much smaller.
    assert vpd_g > 0.4 and vpd_err < 1.8
