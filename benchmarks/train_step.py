"""Seconds per training step, tokens/s and peak memory of a decomposition step.

    python benchmarks/train_step.py [--quick]

Model (the speed issue's benchmark): LLaMA-style 4 layers (RMSNorm, rotary, gated SiLU MLP),
d_model 128, 4 heads, d_mlp 512, vocab 4096, n_ctx 128; all 28 matrices decomposed at C = 512;
batch 8 × 128 tokens; shared-MLP CI (64 hidden); uniform-k-subset routing.

Rows: the target's own fp32 forward + backward, then stochastic-only, + fresh PGD-20,
+ persistent PGD with 2 inner steps (the VPD paper's), 1, and 0 (the sources ascend only on
the gradient the outer pass leaves on them), each in fp32 (``autocast="none"``), in the default
precision, and in the default precision with ``compile=True`` (the first steps, which compile,
are warm-up).
Each row runs in its own process (so peak RSS is its own) and the rows are run in two interleaved
rounds (median kept). "× floor" is s/step over the arithmetic floor: the step's matmul FLOPs
(target forward + masked forward and backward per masked pass) at the matmul rate this machine
measures for that precision. A second table checks that time grows linearly in tokens and in C.
``--malloc both`` runs every row also with ``TL_VPD_KEEP_FREED_MEMORY=0`` (glibc's default
allocator behaviour; the library's default keeps freed memory for reuse, tl_vpd/allocator.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from _common import bench_model, machine, peak_rss_gib, timeit

ADVERSARY = {
    "stochastic only": dict(adversary="none", coeff_adversarial=0.0),
    "+ fresh PGD-20": dict(adversary="fresh", pgd_steps=20),
    "+ persistent PGD (2 inner)": dict(adversary="persistent", ppgd_inner_steps=2),
    "+ persistent PGD (1 inner)": dict(adversary="persistent", ppgd_inner_steps=1),
    # No warm-up pass: the sources ascend once per step, on the gradient the outer pass leaves.
    "+ persistent PGD (0 inner)": dict(adversary="persistent", ppgd_inner_steps=0),
}


def masked_passes(name: str) -> int:
    """Masked forward + backward passes per step of an ``ADVERSARY`` row, for the FLOP floor: the
    stochastic pass, plus the adversary's search passes and its outer pass."""
    kw = ADVERSARY[name]
    search = {"fresh": kw.get("pgd_steps", 0), "persistent": kw.get("ppgd_inner_steps", 0)}
    return 1 + (0 if kw["adversary"] == "none" else search[kw["adversary"]] + 1)


def gated_model():
    return bench_model(act_fn="silu", gated=True)


def step_flops(model, C: int, B: int, T: int, passes: int) -> float:
    """Matmul FLOPs of one step: target forward, and per masked pass a forward and a backward
    (≈ 2× the forward) of the model plus the factorized term 2·C·(d_in + d_out) per site."""
    cfg = model.cfg
    tok = B * T
    d, m = cfg.d_model, cfg.d_mlp
    per_layer = 4 * d * d + 3 * d * m  # W_Q, W_K, W_V, W_O, W_in, W_gate, W_out
    dense = 2 * (cfg.n_layers * per_layer + d * cfg.d_vocab) * tok
    attn = cfg.n_layers * 2 * 2 * B * T * T * d
    factor = cfg.n_layers * (4 * 2 * C * 2 * d + 3 * 2 * C * (d + m)) * tok
    target = dense + attn
    return target + passes * 3 * (target + factor)


def matmul_rate(dtype: torch.dtype) -> float:
    """FLOP/s of a 1024³ matmul in ``dtype`` on this machine (best of 5)."""
    a = torch.randn(1024, 1024, dtype=dtype)
    b = torch.randn(1024, 1024, dtype=dtype)
    a @ b
    best = min(timeit(lambda: a @ b, 1, warmup=0) for _ in range(5))
    return 2 * 1024**3 / best


def run_row(name: str, autocast: str, B: int, T: int, C: int, reps: int) -> dict:
    compile_ = autocast.endswith("+compile")
    autocast = autocast.removesuffix("+compile")
    import tl_vpd
    from tl_vpd.allocator import keep_freed_memory

    keep_freed_memory()  # as the Trainer does on CPU (so the target row is timed alike)
    model = gated_model()
    toks = torch.randint(0, model.cfg.d_vocab, (max(4 * B, 32), T),
                         generator=torch.Generator().manual_seed(0))
    if name == "target fwd+bwd":
        for p in model.parameters():
            p.requires_grad_(True)
        t = timeit(lambda: model(toks[:B], return_type="loss").backward(), reps)
        return {"s": t, "rss": peak_rss_gib()}
    cfg = tl_vpd.VPDConfig(C=C, batch_size=B, seq_len=T, steps=1000, progress=False,
                           faithfulness_warmup_steps=0, autocast=autocast, compile=compile_,
                           **ADVERSARY[name])
    trainer = tl_vpd.Trainer(model, cfg, toks)
    t = timeit(lambda: trainer.train_step(trainer.stream.next()), reps, warmup=2 if compile_ else 1)
    return {"s": t, "rss": peak_rss_gib()}


def _child(name, autocast, B, T, C, reps, malloc="kept"):
    cmd = [sys.executable, __file__, "--row", json.dumps([name, autocast, B, T, C, reps])]
    env = dict(os.environ, TL_VPD_KEEP_FREED_MEMORY="1" if malloc == "kept" else "0")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small batch and C, 1 round (CI)")
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--no-scaling", action="store_true", help="skip the linearity table")
    ap.add_argument("--only", nargs="+", metavar="TEXT",
                    help="run only the modes whose name contains one of these "
                         "(e.g. --only stochastic persistent --autocast auto)")
    ap.add_argument("--autocast", nargs="+", metavar="KIND",
                    help="autocast kinds to run (none, auto, auto+compile; default: all three)")
    ap.add_argument("--malloc", choices=("kept", "default", "both"), default="kept",
                    help="freed CPU memory kept for reuse (the library's default), glibc's "
                         "default, or both side by side")
    args = ap.parse_args()
    if args.row:
        print(json.dumps(run_row(*json.loads(args.row))))
        return
    import tl_vpd

    default = tl_vpd.VPDConfig().autocast
    B, T, C, reps, rounds = (2, 32, 64, 1, 1) if args.quick else (8, 128, 512, 3, 2)
    kinds = ("none", default, f"{default}+compile")
    if args.autocast:
        kinds = tuple(args.autocast)
    modes = [n for n in ADVERSARY if not args.only or any(t in n for t in args.only)]
    mallocs = ("kept", "default") if args.malloc == "both" else (args.malloc,)
    rows = [(n, a, m) for n, a in [("target fwd+bwd", "none")] + [(n, a) for n in modes
                                                                  for a in kinds]
            for m in mallocs]
    results = {r: [] for r in rows}
    t0 = time.time()
    for _ in range(rounds):  # interleaved rounds: load from elsewhere hits every row alike
        for name, ac, mk in rows:
            results[(name, ac, mk)].append(_child(name, ac, B, T, C, reps, mk))
    res = {k: {"s": statistics.median(x["s"] for x in v), "rss": max(x["rss"] for x in v)}
           for k, v in results.items()}
    model = gated_model()
    fp32, bf16 = matmul_rate(torch.float32), matmul_rate(torch.bfloat16)
    rate = {"none": fp32, "bfloat16": bf16, "auto": bf16}  # "auto" is bf16 on a language model
    rate.update({f"{k}+compile": v for k, v in rate.items()})
    print(f"machine: {machine()}; B={B}, T={T}, C={C} per site, 28 sites, shared_mlp CI; "
          f"matmul rate fp32 {fp32 / 1e9:.0f} GFLOP/s, bf16 {bf16 / 1e9:.0f} GFLOP/s")
    print(f"{'mode':<28}{'autocast':>14}{'freed mem':>10}{'s/step':>9}{'tok/s':>9}"
          f"{'× tgt f+b':>10}{'× stoch':>9}{'GFLOP':>8}{'× floor':>9}{'RSS GiB':>9}")
    for (name, ac, mk), r in res.items():
        base = res[("target fwd+bwd", "none", mk)]["s"]
        stoch = res.get(("stochastic only", ac, mk))  # blank when that row was not run (--only)
        x_stoch = "" if stoch is None else f"{r['s'] / stoch['s']:.2f}"
        fl = step_flops(model, C, B, T, masked_passes(name)) if name in ADVERSARY else None
        floor = "" if fl is None else f"{r['s'] / (fl / rate[ac]):>9.1f}"
        gf = "" if fl is None else f"{fl / 1e9:>8.1f}"
        print(f"{name:<28}{ac:>14}{mk:>10}{r['s']:>9.3f}{B * T / r['s']:>9.0f}"
              f"{r['s'] / base:>10.2f}{x_stoch:>9}{gf:>8}{floor:>9}{r['rss']:>9.2f}")
    for k in kinds:
        for mk in mallocs:
            for n in (n for n in modes if ADVERSARY[n]["adversary"] == "persistent"):
                pers, stoch = res.get((n, k, mk)), res.get(("stochastic only", k, mk))
                if pers and stoch:
                    print(f"{n.removeprefix('+ ')} / stochastic-only, {k}, freed memory {mk}: "
                          f"{pers['s'] / stoch['s']:.2f} (target ≤ 1.5)")
    if len(mallocs) == 2:
        print("\nkept ÷ glibc default (freed memory):")
        for name, ac, mk in rows:
            if mk == "kept":
                ratio = res[(name, ac, 'kept')]['s'] / res[(name, ac, 'default')]['s']
                print(f"  {name:<28}{ac:>14}{ratio:>7.2f}")
    if not args.no_scaling:
        print(f"\nlinearity ({default}, stochastic only; time ÷ base should track the factor):")
        print(f"{'B·T':>8}{'C':>6}{'s/step':>9}{'× base':>8}")
        cases = [(B, T, C), (2 * B, T, C), (4 * B, T, C), (B, T, 2 * C), (B, T, 4 * C)]
        times = [_child("stochastic only", default, b, t, c, reps)["s"] for b, t, c in cases]
        for (b, t, c), s in zip(cases, times):
            print(f"{b * t:>8}{c:>6}{s:>9.3f}{s / times[0]:>8.2f}")
    print(f"(total {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
