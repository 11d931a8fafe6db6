"""Masked forward cost: plain vs hooked factorized vs materialized per-token weights.

    python benchmarks/masked_forward.py [--quick]

Targets (engine issue): hooked masked ≥ 30× faster than materialized, and
(masked time / plain time) ≤ 1.5 × (masked FLOPs / plain FLOPs).
"""

from __future__ import annotations

import argparse

import torch

from _common import bench_model, machine, no_grad, random_masks, time_masked_forward, timeit
from tl_vpd import Decomposition


def flops(model, dec, B, T):
    """Forward FLOPs (2 per multiply-add) of the plain model and of the factorized masked form."""
    cfg = model.cfg
    tok = B * T
    dense = sum(2 * c.d_out * c.d_in for c in dec.components.values()) * tok
    attn = cfg.n_layers * 2 * 2 * B * T * T * cfg.n_heads * cfg.d_head  # QKᵀ and pattern·V
    unembed = 2 * cfg.d_model * cfg.d_vocab * tok
    plain = dense + attn + unembed
    factor = sum(2 * c.C * (c.d_in + c.d_out) for c in dec.components.values()) * tok
    return plain, plain + factor


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats, smaller batch (CI)")
    args = ap.parse_args()
    torch.manual_seed(0)
    B, T = (2, 64) if args.quick else (8, 128)
    reps = 3 if args.quick else 10
    model = bench_model()
    d = model.cfg.d_model
    dec = Decomposition.from_model(model, C=4 * d)
    toks = torch.randint(0, model.cfg.d_vocab, (B, T))
    masks, dmasks = random_masks(dec, B, T)
    t = time_masked_forward(model, dec, toks, masks, dmasks, reps)
    t_plain, t_masked, t_masked_bwd = t["plain"], t["masked"], t["masked_bwd"]
    # The materialized reference holds tokens·d_out·d_in floats per site: compare it with the
    # factorized form on one sequence (timed apart: the reference's GiB-sized temporaries slow
    # whatever runs right after them).
    m1 = {k: v[:1] for k, v in masks.items()}
    d1 = {k: v[:1] for k, v in dmasks.items()}
    t1 = {"masked": timeit(no_grad(lambda: dec.run_masked(toks[:1], m1, d1)), reps),
          "materialized": timeit(no_grad(lambda: dec.run_masked(toks[:1], m1, d1, impl="materialized")),
                                 2 if args.quick else 3)}
    with torch.no_grad():
        err = (dec.run_masked(toks[:1], m1, d1) - dec.run_masked(toks[:1], m1, d1, impl="materialized")).abs().max().item()
    t_mat = t1["materialized"] * B  # per full batch, for the table

    f_plain, f_masked = flops(model, dec, B, T)
    print(f"machine: {machine()}")
    print(f"model: 4 layers, d_model {d}, d_mlp {model.cfg.d_mlp}, {len(dec.sites)} sites, C={4 * d} per site, B={B}, T={T}")
    print(f"{'form':<34}{'ms':>10}{'× plain':>10}")
    print(f"{'plain forward':<34}{t_plain * 1e3:>10.1f}{1.0:>10.2f}")
    print(f"{'hooked masked forward (factorized)':<34}{t_masked * 1e3:>10.1f}{t_masked / t_plain:>10.2f}")
    print(f"{'hooked masked forward + backward':<34}{t_masked_bwd * 1e3:>10.1f}{t_masked_bwd / t_plain:>10.2f}")
    print(f"{'materialized per-token W (B=1 ×B)':<34}{t_mat * 1e3:>10.1f}{t_mat / t_plain:>10.2f}")
    print()
    print(f"FLOP lower bound: plain {f_plain / 1e9:.2f} GFLOP, factorized masked {f_masked / 1e9:.2f} GFLOP "
          f"(ratio {f_masked / f_plain:.2f})")
    r1 = t1["materialized"] / t1["masked"]
    print(f"one sequence: factorized {t1['masked'] * 1e3:.1f} ms, materialized {t1['materialized'] * 1e3:.1f} ms")
    r2 = (t_masked / t_plain) / (f_masked / f_plain)
    print(f"materialized / masked = {r1:.0f}×   (target ≥ 30×: {'PASS' if r1 >= 30 else 'FAIL'})")
    print(f"(masked/plain time) / (masked/plain FLOPs) = {r2:.2f}   (target ≤ 1.5: {'PASS' if r2 <= 1.5 else 'FAIL'})")
    print(f"max |factorized − materialized| logit difference: {err:.2e}")


if __name__ == "__main__":
    main()
