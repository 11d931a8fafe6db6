"""evaluate(): the CE/KL table, L0 and alive counts, adversarial KL (the report object itself:
test_report.py)."""

import pytest
import torch
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

import tl_vpd
from tl_vpd import Decomposition
from tl_vpd.backends import HookPointSiteSpec
from tl_vpd.data.corpus import default_corpus
from tl_vpd.eval_pgd import AttackBatch, shared_pgd
from tl_vpd.evaluate import compute_recovered, evaluate, l0_per_site
from tl_vpd.target import target_config, train_target
from model_zoo import make_model, tokens


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine two threads spin-wait
    each other and run these tests 30× slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


MODES = ["target", "unmasked", "stochastic", "CI as mask", "rounded CI > 0", "rounded CI > 0.1",
         "rounded CI > 0.5", "zero-ablated", "unmasked, Δ on"]
N_BATCHES, BATCH = 3, 4


@pytest.fixture(scope="module")
def random_dec():
    """A random 2-layer model decomposed for a few dozen steps with C >= every matrix's rank."""
    model = make_model("llama")  # gated MLP and GQA: every kind of site
    cfg = tl_vpd.VPDConfig(C=40, steps=30, batch_size=4, seq_len=12, progress=False,
                           faithfulness_warmup_steps=100)
    return tl_vpd.decompose(model, cfg, tokens(32, 12, seed=1))


@pytest.fixture(scope="module")
def eval_tokens():
    return tokens(N_BATCHES * BATCH, 12, seed=2)


@pytest.fixture(scope="module")
def report(random_dec, eval_tokens):
    return evaluate(random_dec, eval_tokens, n_batches=N_BATCHES, batch_size=BATCH,
                    pgd_steps=(2, 4), progress=False)


def test_table_rows_and_sanity_row(random_dec, report):
    assert [r["mode"] for r in report.recon] == MODES
    target, zero = report.row("target"), report.row("zero-ablated")
    delta_on = report.row("unmasked, Δ on")
    assert abs(delta_on["ce"] - target["ce"]) <= 1e-5
    assert target["kl"] == 0.0 and delta_on["kl"] <= 1e-6
    assert target["ce_recovered"] == 1.0 and zero["ce_recovered"] == 0.0
    assert target["compute_recovered"] is None  # no curve given
    assert report.zero_ablated == zero["kl"] > 0
    assert all(r["kl"] >= 0 for r in report.recon)
    # Masks that differ from 1 move the output: the table is not vacuous.
    assert report.row("CI as mask")["kl"] > 1e-4
    with pytest.raises(KeyError, match="no masking mode"):
        report.row("nonsense")


def test_ce_and_l0_match_direct_computation(random_dec, eval_tokens, report):
    """Every eval example is used, so the means equal a direct computation on all of them."""
    model = random_dec.model
    with torch.no_grad():
        ce = model(eval_tokens, return_type="loss").item()
    assert report.row("target")["ce"] == pytest.approx(ce, abs=1e-5)
    assert report.n_tokens == eval_tokens.numel()
    ci = random_dec.causal_importance(eval_tokens)
    l0 = l0_per_site(ci)
    for r in report.sites:
        assert r["l0"] == pytest.approx(l0[r["site"]], rel=1e-6)
        g = ci[r["site"]].flatten(0, -2)
        assert r["alive"] == int((g.double().mean(0) > 1e-6).sum())
        assert r["fired"] == int((g > 0).any(0).sum())
        assert r["alive"] <= r["fired"] <= r["C"]
    assert report.total["l0"] == pytest.approx(sum(l0.values()))
    assert [l["layer"] for l in report.layers] == [0, 1]
    assert sum(l["alive"] for l in report.layers) == report.total["alive"]
    assert report.total["l0_per_alive"] == pytest.approx(report.total["l0"] / report.total["alive"])


def test_adversarial_rows(report):
    assert [r["pgd_steps"] for r in report.adversarial] == [2, 4]
    assert all(r["kl"] > 0 for r in report.adversarial)
    ref = report.adversarial_reference
    assert ref["n_batches"] == N_BATCHES and ref["n_tokens"] == report.n_tokens
    assert report.settings["pgd_restarts"] == 3
    for r in report.adversarial:  # mean and spread over 3 random restarts
        assert len(r["kl_restarts"]) == 3
        assert r["kl_min"] <= r["kl"] <= r["kl_max"]
        assert r["kl"] == pytest.approx(sum(r["kl_restarts"]) / 3)
        assert r["per_stochastic"] == pytest.approx(r["kl"] / ref["stochastic"])
        assert r["per_zero_max"] == pytest.approx(r["kl_max"] / ref["zero-ablated"])
    # The references are the table's modes measured on the attacked tokens (here the same ones).
    assert ref["zero-ablated"] == pytest.approx(report.zero_ablated, rel=1e-5)
    assert report.pgd(4) is report.adversarial[1]
    with pytest.raises(KeyError, match="no PGD attack of 3 steps"):
        report.pgd(3)


def test_shared_sources_span_every_attacked_batch(random_dec, eval_tokens):
    """One source per subcomponent across all batches: attacking two batches with gradients
    accumulated batch by batch is the attack on their concatenation."""
    with torch.no_grad():
        target, inputs = random_dec.run_target(eval_tokens)
        ci = random_dec.ci(inputs).lower
    halves = [AttackBatch(eval_tokens[s], target[s], {k: v[s] for k, v in ci.items()})
              for s in (slice(0, 4), slice(4, 12))]  # unequal sizes: token-weighted
    whole = AttackBatch(eval_tokens[:12], target[:12], {k: v[:12] for k, v in ci.items()})
    kl = [shared_pgd(random_dec, batches, 3, generator=torch.Generator().manual_seed(5),
                     autocast="none") for batches in (halves, [whole])]  # exact arithmetic
    assert kl[0] == pytest.approx(kl[1], rel=1e-4)
    start = shared_pgd(random_dec, [whole], 0, generator=torch.Generator().manual_seed(5))
    assert kl[1] > start  # the attack ascends


def test_pgd_tokens_pick_the_attacked_batches(random_dec, report):
    """Batches beyond the tables' are drawn for the attack; the tables do not change."""
    data = tokens(48, 12, seed=3)
    kw = dict(n_batches=2, batch_size=BATCH, pgd_steps=(2,), pgd_restarts=1, progress=False)
    more = evaluate(random_dec, data, pgd_tokens=200, **kw)  # 48 tokens a batch: 5 batches
    assert more.settings["pgd_batches"] == more.adversarial_reference["n_batches"] == 5
    assert more.adversarial_reference["n_tokens"] == 240 and more.n_tokens == 96
    one = evaluate(random_dec, data, pgd_batches=1, **kw)  # overrides pgd_tokens
    assert one.adversarial_reference["n_tokens"] == 48
    assert one.recon == more.recon and one.sites == more.sites
    r = one.adversarial[0]
    assert r["kl_min"] == r["kl"] == r["kl_max"]  # one restart
    none = evaluate(random_dec, data, pgd_batches=0, **kw)
    assert none.adversarial == [] and none.adversarial_reference == {}
    with pytest.raises(ValueError, match="pgd_restarts must be >= 1"):
        evaluate(random_dec, data, pgd_restarts=0, n_batches=1)


def test_ci_spectrum_and_histograms(random_dec, eval_tokens, report):
    ci = random_dec.causal_importance(eval_tokens)
    assert [s["site"] for s in report.ci_spectrum] == random_dec.sites
    for spec, hist in zip(report.ci_spectrum, report.ci_histograms):
        g = ci[spec["site"]].flatten(0, -2).double()
        expected = g.mean(0).sort(descending=True).values
        assert spec["mean_ci"] == pytest.approx(expected.tolist(), abs=1e-7)
        assert hist["site"] == spec["site"] and len(hist["edges"]) == len(hist["counts"]) + 1
        assert hist["zeros"] == int((g <= 0).sum())
        assert hist["zeros"] + sum(hist["counts"]) == g.numel()


def test_compute_recovered_by_hand():
    curve = [{"step": 0, "tokens_seen": 0, "val_ce": 5.0},
             {"step": 10, "tokens_seen": 100, "val_ce": 4.0},
             {"step": 20, "tokens_seen": 200, "val_ce": 3.0}]
    assert compute_recovered(3.0, 3.0, curve) == 1.0
    assert compute_recovered(4.5, 3.0, curve) == pytest.approx(0.25)  # halfway to step 10
    assert compute_recovered(3.5, 3.0, curve) == pytest.approx(0.75)
    assert compute_recovered(6.0, 3.0, curve) == 0.0  # worse than the untrained model
    assert compute_recovered(2.5, 3.0, curve) == 1.0  # better than the target: capped
    # The degradation is placed relative to the curve's end (eval and curve tokens differ).
    assert compute_recovered(3.3, 2.8, curve) == pytest.approx(0.75)
    assert compute_recovered(4.0, 3.0, None) is None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny target trained on the default corpus, and its decomposition."""
    corpus = default_corpus(seq_len=32, vocab_size=320, max_bytes=300_000,
                            cache_dir=tmp_path_factory.mktemp("corpus"))
    cfg = target_config(320, d_model=32, n_layers=2, n_heads=4, n_ctx=32)
    run = train_target(cfg, corpus.train, corpus.val, steps=40, batch_size=16, lr=1e-2,
                       warmup_steps=5, eval_every=10, eval_batches=2, progress=False)
    vcfg = tl_vpd.VPDConfig(C=32, steps=40, batch_size=8, seq_len=32, progress=False,
                            faithfulness_warmup_steps=200)
    dec = tl_vpd.decompose(run.model, vcfg, corpus.train)
    return dec, corpus, run.curve


def test_ordering_on_a_trained_target(trained):
    dec, corpus, curve = trained
    rep = evaluate(dec, corpus.val, n_batches=2, batch_size=16, pgd_steps=(3,), target_curve=curve,
                   pgd_tokens=1024, progress=False)
    ce = {r["mode"]: r["ce"] for r in rep.recon}
    # U V reproduces W closely (C >= rank), and removing every matrix hurts a trained model.
    assert ce["target"] <= ce["unmasked"] + 1e-3
    assert ce["unmasked"] < ce["zero-ablated"] - 0.1
    assert ce["target"] <= ce["CI as mask"] + 1e-3
    assert rep.row("unmasked")["ce_recovered"] > 0.95
    rec = [r["compute_recovered"] for r in rep.recon]
    assert all(0.0 <= x <= 1.0 for x in rec)
    assert rep.row("target")["compute_recovered"] == 1.0  # the curve falls to its last point
    assert rep.row("zero-ablated")["compute_recovered"] < rep.row("unmasked")["compute_recovered"]
    # PGD on 1,024 tokens = two batches of 16 × 32, one set of sources across both.
    assert rep.adversarial_reference["n_tokens"] == 1024
    assert rep.pgd(3)["per_zero"] > 0


class _ToyMLP(HookedRootModule):
    """``x -> W_out relu(W_in x)`` with the hook points the hook-point backend needs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.W_in, self.W_out = nn.Linear(6, 10), nn.Linear(10, 6)
        self.hook_x, self.hook_pre, self.hook_h, self.hook_out = (HookPoint() for _ in range(4))
        self.setup()

    def forward(self, x):
        h = self.hook_h(torch.relu(self.hook_pre(self.W_in(self.hook_x(x)))))
        return self.hook_out(self.W_out(h))

    def vpd_sites(self):
        return [HookPointSiteSpec("layers.0.W_in", lambda: self.W_in.weight, lambda: self.W_in.bias,
                                  "hook_x", "hook_pre", layer=0),
                HookPointSiteSpec("layers.0.W_out", lambda: self.W_out.weight,
                                  lambda: self.W_out.bias, "hook_h", "hook_out", layer=0)]


def test_toy_models_report_mse():
    dec = Decomposition.from_model(_ToyMLP(), C=8)
    rep = evaluate(dec, lambda b, g: torch.rand(b, 6, generator=g), n_batches=2, batch_size=16,
                   pgd_steps=(2,), progress=False)
    assert rep.metric == "mse" and [r["mode"] for r in rep.recon] == MODES
    assert rep.row("target")["mse"] == 0.0 and rep.row("unmasked, Δ on")["mse"] <= 1e-12
    assert rep.row("zero-ablated")["mse_recovered"] == 0.0
    assert rep.n_tokens == 32 and rep.layers[0]["C"] == 16
    assert "MSE" in repr(rep) and "mse" in rep.adversarial[0]
    # 8,192 examples attacked (the default), as one batch: toy batches are tiny.
    assert rep.adversarial_reference["n_tokens"] == 8192 and rep.settings["pgd_batches"] == 512


def test_decomposition_method_is_the_free_function(random_dec, eval_tokens, report):
    again = random_dec.evaluate(eval_tokens, n_batches=N_BATCHES, batch_size=BATCH,
                                pgd_steps=(2, 4), progress=False)
    assert again == report  # same seed: the same numbers
