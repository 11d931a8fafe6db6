"""Per-layer TopK transcoders (tl_vpd.baselines): the architecture, the splice, training and the
CE/KL table against direct computations."""

import copy
import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model_zoo import make_model, tokens
from tl_vpd import Decomposition
from tl_vpd.baselines import (
    Transcoder,
    capture_mlps,
    evaluate_transcoders,
    mlp_points,
    spliced,
    split_fraction,
    train_transcoders,
)
from tl_vpd.evaluate import evaluate


@pytest.fixture(scope="module")
def gpt2():
    return make_model("gpt2")


@pytest.fixture(scope="module")
def trained(gpt2):
    return train_transcoders(gpt2, tokens(256, 16, seed=1), n_latents=128, k=8, steps=300,
                             batch_size=16, lr=3e-3, progress=False)


def _clean_mlps(model, toks):
    with torch.no_grad(), capture_mlps(model, mlp_points(model)) as seen:
        logits = model(toks)
    return logits, dict(seen)


# ------------------------------------------------------------------------------ architecture
def test_topk_keeps_exactly_k_latents():
    tc = Transcoder(8, 8, 32, k=5, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 7, 8)
    pre = tc.pre_acts(x)
    acts = tc.encode(x)
    active = acts > 0
    assert (active.sum(-1) <= 5).all()
    top = torch.zeros_like(active).scatter(-1, pre.topk(5, dim=-1).indices, True)
    assert not (active & ~top).any()  # only top-k latents are ever active ...
    assert torch.equal(acts[active], pre[active])  # ... with their pre-activation as value
    with torch.no_grad():
        tc.b_enc.fill_(100.0)  # every pre-activation positive: exactly k survive the ReLU
    assert ((tc.encode(x) > 0).sum(-1) == 5).all()


def test_decoder_rows_stay_unit_norm_and_k_is_checked():
    tc = Transcoder(4, 6, 10, k=2)
    assert torch.allclose(tc.W_dec.norm(dim=-1), torch.ones(10))
    with torch.no_grad():
        tc.W_dec.mul_(3.0)
    tc.normalize_decoder_()
    assert torch.allclose(tc.W_dec.norm(dim=-1), torch.ones(10))
    with pytest.raises(ValueError, match="k must be"):
        Transcoder(4, 4, 3, k=4)


# ------------------------------------------------------------------------------ splice
@pytest.mark.parametrize("family", ["gpt2", "llama", "parallel", "sandwich"])
def test_splicing_the_true_mlp_output_reproduces_the_logits(family):
    model = make_model(family)
    toks = tokens(2, 12, seed=3)
    logits, seen = _clean_mlps(model, toks)

    def true_output(layer):
        def fn(x):
            assert torch.equal(x, seen[layer][0])  # the replacement sees the MLP's real input
            return seen[layer][1]
        return fn

    with torch.no_grad(), spliced(model, {layer: true_output(layer) for layer in seen}):
        assert torch.equal(model(toks), logits)
    with torch.no_grad(), spliced(model, {0: torch.zeros_like}):  # the splice takes effect ...
        assert not torch.allclose(model(toks), logits, atol=1e-4)
    with torch.no_grad():  # ... and is gone afterwards
        assert torch.equal(model(toks), logits)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_splicing_the_mlp_module_itself_is_exact(family):
    model = make_model(family)
    toks = tokens(2, 12, seed=4)
    with torch.no_grad():
        logits = model(toks)
        # copies, made before the splice hooks the originals (the MLP itself would fire them twice)
        copies = {layer: copy.deepcopy(model.blocks[layer].mlp) for layer in range(2)}
        with spliced(model, copies):
            assert torch.equal(model(toks), logits)


def test_bridge_splices_at_the_same_points():
    from bridge_zoo import make_bridge
    from bridge_zoo import tokens as bridge_tokens

    model = make_bridge("native_gpt2")
    toks = bridge_tokens(2, 8, seed=5)
    points = mlp_points(model)
    assert [p.input_name for p in points] == ["blocks.0.mlp.hook_in", "blocks.1.mlp.hook_in"]
    logits, seen = _clean_mlps(model, toks)
    with torch.no_grad(), spliced(model, {layer: (lambda x, y=y: y) for layer, (_, y) in seen.items()}):
        assert torch.equal(model(toks), logits)
    with torch.no_grad(), spliced(model, {1: torch.zeros_like}):
        assert not torch.allclose(model(toks), logits, atol=1e-4)
    tcs = train_transcoders(model, bridge_tokens(32, 8, seed=6), 16, 2, steps=3, batch_size=8,
                            progress=False)
    rep = evaluate_transcoders(model, tcs, bridge_tokens(16, 8, seed=7), n_batches=2,
                               batch_size=8, progress=False)
    assert rep.total["l0"] <= 2 * 2


def test_unsupported_models_raise_clearly():
    with pytest.raises(ValueError, match="attention-only"):
        mlp_points(make_model("attn_only"))
    with pytest.raises(TypeError, match="HookedTransformer or TransformerBridge"):
        mlp_points(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="block indices"):
        mlp_points(make_model("gpt2"), layers=[2])


# ------------------------------------------------------------------------------ training
def test_trained_transcoder_beats_the_zero_and_mean_baselines(gpt2, trained):
    _, seen = _clean_mlps(gpt2, tokens(64, 16, seed=2))  # held-out tokens
    for layer, (x, y) in seen.items():
        with torch.no_grad():
            mse = (trained[layer](x) - y).pow(2).sum(-1).mean()
        zero = y.pow(2).sum(-1).mean()
        mean = (y - y.flatten(0, 1).mean(0)).pow(2).sum(-1).mean()
        assert mse < 0.35 * mean < zero, (layer, mse.item(), mean.item(), zero.item())
    assert "blocks.0.hook_mlp_out" in repr(trained)


# ------------------------------------------------------------------------------ evaluation
def test_evaluation_is_what_it_claims(gpt2, trained):
    toks = tokens(32, 16, seed=8)  # 4 × 8 rows: every row evaluated once, in some order
    rep = evaluate_transcoders(gpt2, trained, toks, n_batches=4, batch_size=8, progress=False)

    def direct(fn):  # splice by TL hook names: ln2 of hook_resid_mid -> hook_mlp_out
        resid = {}
        hooks = []
        for layer in range(2):
            hooks.append((f"blocks.{layer}.hook_resid_mid",
                          lambda t, hook, layer=layer: resid.__setitem__(layer, t)))
            hooks.append((f"blocks.{layer}.hook_mlp_out", lambda t, hook, layer=layer:
                          fn(layer, gpt2.blocks[layer].ln2(resid[layer]), t)))
        with torch.no_grad():
            return gpt2.run_with_hooks(toks, fwd_hooks=hooks).double(), resid

    target, _ = direct(lambda layer, x, t: t)
    active = {}

    def transcoded(layer, x, t):
        acts = trained[layer].encode(x)
        active[layer] = acts > 0
        return trained[layer].decode(acts)

    for mode, fn in (("transcoders", transcoded),
                     ("zero-ablated", lambda layer, x, t: torch.zeros_like(t))):
        logits, _ = direct(fn)
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), toks[:, 1:].flatten()).item()
        p_t = target.log_softmax(-1)
        kl = (p_t.exp() * (p_t - logits.log_softmax(-1))).sum(-1).mean().item()
        row = rep.row(mode)
        assert math.isclose(row["ce"], ce, rel_tol=1e-6), (mode, row["ce"], ce)
        assert math.isclose(row["kl"], kl, rel_tol=1e-5, abs_tol=1e-9), (mode, row["kl"], kl)
    ce_t = F.cross_entropy(target[:, :-1].flatten(0, 1), toks[:, 1:].flatten()).item()
    assert math.isclose(rep.row("target")["ce"], ce_t, rel_tol=1e-9)
    assert math.isclose(rep.row("transcoders")["ce_degradation"],
                        rep.row("transcoders")["ce"] - ce_t, rel_tol=1e-6)
    for r in rep.layers:
        act = active[r["layer"]].flatten(0, 1)
        assert math.isclose(r["l0"], act.sum(-1).double().mean().item(), rel_tol=1e-9)
        assert r["alive"] == int(act.any(0).sum())
        assert 0 < r["nmse"] < 1
    assert rep.total["l0"] == pytest.approx(sum(r["l0"] for r in rep.layers))


def test_target_row_matches_the_decomposition_evaluation(gpt2, trained):
    data = tokens(40, 16, seed=9)
    dec = Decomposition.from_model(gpt2, C=4, sites="blocks.*.mlp.*")
    ref = evaluate(dec, data, n_batches=2, batch_size=16, pgd_steps=(), pgd_batches=0,
                   progress=False)
    rep = evaluate_transcoders(gpt2, trained, data, n_batches=2, batch_size=16, progress=False)
    assert rep.row("target")["ce"] == ref.row("target")["ce"]  # the same tokens, the same code
    assert rep.n_tokens == ref.n_tokens


# ------------------------------------------------------------------------------ splitting
def test_split_fraction_by_hand():
    e1, e2 = torch.eye(2)
    # e1 matches e1 and (e1 + e2)/√2 (cos 0.71): split; e2 matches only (e1 + e2)/√2 and e2 ...
    target = torch.stack([e1, e1 + e2, -e2])
    assert split_fraction(torch.stack([e1]), target) == 1.0
    assert split_fraction(torch.stack([e2]), target) == 0.0  # ... -e2 is not a match ...
    assert split_fraction(torch.stack([e2]), target, absolute=True) == 1.0  # ... up to sign
    assert split_fraction(torch.stack([e1, e2]), target) == 0.5
    assert split_fraction(torch.zeros(0, 2), target) is None


# ------------------------------------------------------------------------------ benchmark
def test_benchmark_core_runs_on_a_toy_size(gpt2):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "baselines.py"
    spec = importlib.util.spec_from_file_location("bench_baselines", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    size = dict(bench.SIZES["quick"], seq_len=16, C=2, vpd_steps=2, vpd_batch=4, tc_steps=3,
                tc_batch=8, capacity_k=2, pareto_k=(1,), pareto_mult=(1,), multiples=(1, 2),
                eval_batches=2, eval_batch=8)
    result = bench.compare(gpt2, tokens(64, 16, seed=10), tokens(16, 16, seed=11), size,
                           log=lambda s: None)
    methods = [r["method"] for r in result["capacity"]]
    assert methods.count("VPD") == 2 and methods.count("transcoder k=2") == 2
    assert len(result["pareto"]) == 2 * 2 + 3
    assert all("split" in r and 0 <= r["alive_frac"] <= 1 for r in result["capacity"])
    assert "Table 2" in bench.tables(result)
