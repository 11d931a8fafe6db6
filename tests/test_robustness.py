"""The decomposition survives the adversary at quick scale (VPD paper §2: unneeded subcomponents
can be removed in any combination, including the worst one PGD finds).

A tiny LLaMA-style target is trained here, decomposed with the recipe of
``configs/quick_vpd.yaml`` (scaled to the tiny target), and attacked by the evaluation adversary
(PGD with sources shared across every attacked token, several restarts, the strongest kept). The
bounds were measured over seeds 0-2 (below) and set with margin: a regression in the recipe, the losses or the adversary fails this test.
"""

import pytest

import tl_vpd
from tl_vpd.data import default_corpus
from tl_vpd.evaluate import evaluate
from tl_vpd.pipeline import packaged_config
from tl_vpd.target import target_config, train_target
from tl_vpd.target_model import HAS_HOOKED_TRANSFORMER

if not HAS_HOOKED_TRANSFORMER:
    pytest.skip("the bounds were measured on the TL 3.9 (HookedTransformer) target; TL 4 builds "
                "and initialises the target as a bridge, another model", allow_module_level=True)

# The quick recipe (the packaged quick_vpd.yaml) at the tiny target's size, without the training
# loop's evaluations and checkpoints.
RECIPE = tl_vpd.VPDConfig.from_file(packaged_config("quick_vpd.yaml")).replace(
    C=32, steps=300, seq_len=32, eval_every=0, eval_batches=4, eval_pgd_steps=20,
    checkpoint_every=0, log_every=0, progress=False)
# Measured over seeds 0-2 (strongest restart): PGD-20 ÷ stochastic KL 2.75-3.79, ÷ zero-ablation
# KL 0.182-0.253, L0/alive 0.127-0.157; the bounds add ~35% margin. With coeff_faithfulness 1e4
# (the recipe before 2026-12-04) seeds 0-2 gave 2.99-4.03, 0.195-0.273 and 0.135-0.155 (seed 0
# re-measured with this code: 2.94, 0.206, 0.133); the earlier recipe (shared-MLP CI, ppgd_lr
# 0.01, subset routing for the adversary) 7.75x, 0.38, 0.40.
MAX_PGD_PER_STOCHASTIC = 5.1
MAX_PGD_PER_ZERO = 0.34
MAX_L0_PER_ALIVE = 0.21


@pytest.fixture(scope="module")
def target():  # one torch thread, as in every test (conftest.py)
    corpus = default_corpus(seq_len=32, vocab_size=512, max_bytes=400_000)
    cfg = target_config(corpus.vocab_size, d_model=32, n_layers=2, n_heads=4, d_mlp=128, n_ctx=32)
    run = train_target(cfg, corpus.train, corpus.val, steps=200, batch_size=32, lr=5e-3,
                       warmup_steps=20, eval_every=50, eval_batches=4, progress=False)
    return run.model, corpus


def robustness(model, corpus, seed: int = 0) -> dict:
    """Decompose with the quick recipe and attack it; the numbers the bounds are about."""
    dec = tl_vpd.decompose(model, RECIPE.replace(seed=seed), corpus.train)
    report = evaluate(dec, corpus.val, n_batches=2, batch_size=16, pgd_steps=(20,),
                      pgd_tokens=2048, pgd_restarts=2, seed=seed, progress=False)
    row = report.pgd(20)
    return {"pgd_per_stochastic": row["per_stochastic_max"], "pgd_per_zero": row["per_zero_max"],
            "l0_per_alive": report.total["l0_per_alive"]}


def test_the_adversary_does_not_beat_the_quick_recipe(target):
    got = robustness(*target)
    assert got["pgd_per_stochastic"] <= MAX_PGD_PER_STOCHASTIC, got
    assert got["pgd_per_zero"] <= MAX_PGD_PER_ZERO, got
    assert got["l0_per_alive"] <= MAX_L0_PER_ALIVE, got
