"""Does bf16 autocast train as well as fp32? The same decomposition run twice on one target.

    python benchmarks/precision.py [--quick] [--run runs/precision]

Target: the `tl-vpd main --quick` target (2 layers, d_model 64; trained here once, then reused
from the run directory). Decomposition: the quick VPD config (C=64, 300 steps; 100 with
``--quick``), identical seed, once with ``autocast="none"`` (fp32) and once with
``autocast="bfloat16"``. Evaluation (always fp32): CE/KL of the masking modes, L0, and
shared-source PGD-20 KL on the same validation batches. "Within noise" means the bf16 column
differs from fp32 by about as much as two fp32 runs with different seeds do (the last column).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import tl_vpd
from tl_vpd.pipeline import packaged_config, train_target_stage

ROWS = ("unmasked", "stochastic", "CI as mask", "rounded CI > 0.5")


def run(model, corpus, autocast: str, steps: int, seed: int) -> tuple[dict, float]:
    cfg = tl_vpd.VPDConfig.from_file(packaged_config("quick_vpd.yaml")).replace(
        steps=steps, autocast=autocast, seed=seed, progress=False, checkpoint_every=0)
    t = time.perf_counter()
    dec = tl_vpd.decompose(model, cfg, corpus.train)
    took = time.perf_counter() - t
    rep = dec.evaluate(corpus.val, n_batches=4, batch_size=16, pgd_steps=(20,), progress=False)
    rows = {r["mode"]: r["kl"] for r in rep.recon}
    out = {f"KL {m}": rows[m] for m in ROWS}
    out["L0 / alive"] = rep.total["l0_per_alive"]
    out["PGD-20 KL"] = rep.adversarial[0]["kl"]
    out["final stochastic loss"] = dec.history[-1]["stochastic"]
    out["final adversarial loss"] = dec.history[-1]["adversarial"]
    return out, took


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="100 decomposition steps (CI)")
    ap.add_argument("--run", default="runs/precision", help="run directory for the target")
    args = ap.parse_args()
    torch.manual_seed(0)
    steps = 100 if args.quick else 300
    model, corpus, _, _ = train_target_stage(Path(args.run), packaged_config("quick_target.yaml"),
                                             progress=False)
    results = {}
    for name, ac, seed in (("fp32", "none", 0), ("bf16", "bfloat16", 0), ("fp32 seed 1", "none", 1)):
        results[name] = run(model, corpus, ac, steps, seed)
    keys = list(results["fp32"][0])
    print(f"quick target, {steps} decomposition steps; evaluation in fp32 on 4 × 16 validation "
          f"sequences; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'metric':<26}" + "".join(f"{n:>14}" for n in results))
    for k in keys:
        print(f"{k:<26}" + "".join(f"{r[0][k]:>14.4f}" for r in results.values()))
    print(f"{'decomposition s':<26}" + "".join(f"{r[1]:>14.1f}" for r in results.values()))


if __name__ == "__main__":
    main()
