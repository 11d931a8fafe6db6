"""Seconds per training step and peak memory for each adversary setting.

    python benchmarks/train_step.py [--quick]

Model: LLaMA-style 4 layers, d_model 128, 4 heads, d_mlp 512, C = 4·d_model = 512 per site
(24 sites), B=8, T=128, shared-MLP CI. Each mode runs in its own process so peak RSS is its own.
Target (training issue): persistent-PGD step ≤ 1.5× the stochastic-only step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from _common import bench_model, machine, peak_rss_gib, timeit

MODES = {
    "stochastic only": dict(adversary="none", coeff_adversarial=0.0),
    "+ fresh PGD (20 steps)": dict(adversary="fresh", pgd_steps=20),
    "+ persistent PGD (2 inner)": dict(adversary="persistent", ppgd_inner_steps=2),
    "+ persistent PGD (0 inner)": dict(adversary="persistent", ppgd_inner_steps=0),
}


def run_mode(name: str, B: int, T: int, reps: int) -> dict:
    import tl_vpd

    model = bench_model()
    toks = torch.randint(0, model.cfg.d_vocab, (max(B * 4, 32), T), generator=torch.Generator().manual_seed(0))
    if name == "target fwd+bwd":
        for p in model.parameters():
            p.requires_grad_(True)
        t = timeit(lambda: model(toks[:B], return_type="loss").backward(), reps)
        return {"s": t, "rss": peak_rss_gib()}
    cfg = tl_vpd.VPDConfig(C=4 * model.cfg.d_model, batch_size=B, seq_len=T, steps=1000,
                           progress=False, faithfulness_warmup_steps=0, **MODES[name])
    trainer = tl_vpd.Trainer(model, cfg, toks)
    t = timeit(lambda: trainer.train_step(trainer.stream.next()), reps)
    return {"s": t, "rss": peak_rss_gib()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small batch, few repeats (CI)")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    B, T, reps = (2, 32, 2) if args.quick else (8, 128, 2)
    if args.mode:
        print(json.dumps(run_mode(args.mode, B, T, reps)))
        return
    print(f"machine: {machine()}; B={B}, T={T}, C=512 per site, 24 sites, shared_mlp CI")
    rows = {}
    for name in ["target fwd+bwd", *MODES]:
        cmd = [sys.executable, __file__, "--mode", name] + (["--quick"] if args.quick else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows[name] = json.loads(out.strip().splitlines()[-1])
    base = rows["target fwd+bwd"]["s"]
    stoch = rows["stochastic only"]["s"]
    print(f"{'mode':<30}{'s/step':>9}{'× target':>10}{'× stoch':>9}{'peak RSS GiB':>14}")
    for name, r in rows.items():
        print(f"{name:<30}{r['s']:>9.3f}{r['s'] / base:>10.2f}{r['s'] / stoch:>9.2f}{r['rss']:>14.2f}")
    ratio = rows["+ persistent PGD (2 inner)"]["s"] / stoch
    print(f"persistent PGD (paper's 2 inner steps) / stochastic-only = {ratio:.2f} (target ≤ 1.5)")


if __name__ == "__main__":
    main()
