"""Reproduce the SPD paper's toy-model results (Table 1, §3.3) and the cancellation example.

    python benchmarks/reproduce_spd_toys.py --quick                 # smoke run, a few minutes
    python benchmarks/reproduce_spd_toys.py --scale cpu --seeds 0 1 2
    python benchmarks/reproduce_spd_toys.py --scale paper           # the paper's run lengths

For every experiment and seed it trains the target, decomposes it through ``tl_vpd.decompose``
and measures:

* TMS: MMCS / ML2R of ``linear1`` against the columns of ``W`` (paper Table 1), the identity-CI
  error of ``linear1``/``linear2`` on one-hot inputs, and for the identity variants the number of
  live subcomponents on ``hidden_layers.0`` (expected: ``n_hidden``);
* residual MLPs, per layer: live ``W_in`` subcomponents and their identity-CI error (expected:
  one per feature in every layer), live ``W_out`` subcomponents (expected: ``d_mlp``, the
  paper's Fig. 8 count) with the reference implementation's dense-CI error, how many of them read
  a single neuron and whether their CI follows that neuron, the fraction co-active on one-hot
  inputs, and how closely the ``W_in`` subcomponents' neuron contributions (eq. 12) match the
  target's (eq. 11);
* cancellation: ``g`` of the cancelling pair and the worst single ablation the CI allows, for
  SPD and VPD, over a sweep of the importance coefficient.

It prints the tables and the elapsed time, and writes to ``--out`` every run's numbers
(``results.json``) and PNGs of the permuted CI matrices, the TMS subcomponent columns and
the residual MLP's W_out read directions against the neuron axes (``_toy_plots.py``). The
stored CPU-scale run is ``benchmarks/results/spd_toys_cpu/`` (tutorial 01 §5 reads it).

Scales: ``paper`` uses ``tl_vpd.toy_models.reproduce``'s settings (the SPD paper's / reference
implementation's run lengths: 10k steps at batch 4096 for TMS, 30k-200k at batch 2048 for the
residual MLPs — hours on a 2-core CPU). ``cpu`` shortens runs and batches to fit a CPU (the
overrides are listed in ``CPU_OVERRIDES`` and ``METHOD_OVERRIDES``). ``quick`` is
``reproduce(..., quick=True)``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from tl_vpd.evaluate import pgd_recon
from tl_vpd.losses import mse_recon_loss
from tl_vpd.masking import masks_from_sources, sample_sources
from tl_vpd.precision import bf16_is_fast
from tl_vpd.toy_models import (
    EXPERIMENTS,
    CancellationData,
    CancellationToy,
    decompose_cancellation,
    pair_indices,
    reproduce,
    toy_config,
    with_identity,
)
from tl_vpd.toy_models import metrics as M
from tl_vpd.toy_models._runtime import single_threaded

from _toy_plots import plot_ci, plot_neuron_alignment, plot_tms_columns

TMS_NAMES = ["tms_5-2", "tms_40-10", "tms_5-2-id", "tms_40-10-id"]
RESID_NAMES = ["resid_mlp1", "resid_mlp2", "resid_mlp3"]
LONGEST_FIRST = ["resid_mlp3", "resid_mlp2", "tms_40-10-id", "resid_mlp1", "tms_40-10",
                 "tms_5-2-id", "tms_5-2"]
PAPER_TABLE1 = {  # SPD paper Table 1: (MMCS, ML2R)
    "tms_5-2": ("1.000 ± 0.000", "0.993 ± 0.002"),
    "tms_40-10": ("1.000 ± 0.000", "1.010 ± 0.007"),
    "tms_5-2-id": ("1.000 ± 0.000", "0.992 ± 0.010"),
    "tms_40-10-id": ("1.000 ± 0.000", "1.031 ± 0.001"),
}
# Shorter runs for a 2-core CPU (pilot runs, seed 0): TMS 5-2 at batch 1024 and a constant lr of
# 5e-3 reached MMCS 1.000 / ML2R 1.001 by step 1500; TMS 40-10 keeps C = 200 at batch 512 for
# 4000 steps, lr 1e-2 cosine to 0 (MMCS 1.000 / 0.997 / 1.000, ML2R 1.010-1.014 on seeds 0-2,
# ~97 CPU s per run; 6000 steps at 5e-3 gave 0.999 ± 0.002 in ~150 s, 4000 at 7e-3 0.977 on
# seed 1, 3000 at 1e-2 0.994 / 0.974 / 1.000, batch 256 x 6000 at 5e-3 0.981 / 1.000 / 0.958;
# benchmarks/results/tms_40-10_sweep.md, rounds 3-4); the 1-layer residual MLP
# at batch 512 and lr 5e-3 gave ~100 one-feature W_in subcomponents in 4000 steps with an
# importance coefficient of 2e-5 (1e-5, the paper's, was ~3x slower at this batch size); 6000
# steps leave 53 live W_out subcomponents (50 one per neuron; 4000 left 64). bf16 autocast halves
# its step where bf16 matmuls are native (62 -> 28 CPU ms/step here, AMX) with the same result
# on seed 0 (W_in 100 live, id-CI error 0; W_out 53 live, 50 one-neuron, dense error 3;
# benchmarks/results/resid_mlp_sweep.md). It now runs 5000 steps at lr 6e-3 (round 5 there): SPD
# on 3 seeds kept W_in at 100 live with identity-CI error 0 and W_out at 54 / 57 / 54 live, 50
# one-neuron (6000 at 5e-3: 53 / 53 / 53); 4000 at 1e-2 lost W_in features (99 / 100 / 100,
# errors 20 / 3 / 3; VPD 97-98) and batch 256 left 57-64 live on W_out.
CPU_OVERRIDES = {
    "tms_5-2": dict(steps=3000, batch_size=1024, lr=5e-3, lr_final_frac=0.1),
    "tms_5-2-id": dict(steps=3000, batch_size=1024, lr=5e-3, lr_final_frac=0.1),
    "tms_40-10": dict(steps=4000, batch_size=512, lr=1e-2),
    "tms_40-10-id": dict(steps=4000, batch_size=512, lr=1e-2),
    "resid_mlp1": dict(steps=5000, batch_size=512, lr=6e-3, coeff_minimality=2e-5,
                       autocast="bfloat16" if bf16_is_fast("cpu") else "none"),
    "resid_mlp2": dict(steps=6000, batch_size=512, C=200, lr=5e-3, coeff_minimality=2e-5),
    "resid_mlp3": dict(steps=8000, batch_size=512, C=250, ci_hidden=32, lr=5e-3,
                       coeff_minimality=1e-5),
}
# Where one method needs its own CPU setting. VPD on TMS 40-10 + identity at the 4000-step lr-1e-2
# setting lost columns on two seeds of three (MMCS 0.977 ± 0.027, ML2R 0.985 ± 0.048, linear1
# identity-CI errors 5 / 0 / 12; 2026-12-07 table run), where 6000 steps at 5e-3 gave 0.999 ±
# 0.002, so it keeps the longer one; SPD on the same row and VPD on TMS 40-10 were fine at 4000.
METHOD_OVERRIDES = {
    ("tms_40-10-id", "vpd"): dict(steps=6000, lr=5e-3),
    # SPD on TMS 5-2 (both variants) at 2000 steps, 3 seeds (2026-12-08): MMCS 1.000 on every
    # seed, ML2R 1.002-1.006 (plain) and 1.004-1.010 (identity), identity site 2 live. VPD keeps
    # 3000: at 2000 seed 1 of plain TMS 5-2 lost a column (MMCS 0.965, identity-CI error 3).
    ("tms_5-2", "spd"): dict(steps=2000),
    ("tms_5-2-id", "spd"): dict(steps=2000),
}
# VPD at the CPU scale: one warm-up ascent of the persistent adversary per step instead of the
# VPD paper's two (each is a masked forward and backward: ~5 of the 26 ms of a residual-MLP VPD
# step here). Screened on 3 seeds each (2026-12-08), against the same rows at 2:
# - residual MLP: W_in 99 / 100 / 100 live (identity-CI error 9 / 0 / 0), W_out 52 / 58 / 55 live,
#   50 one-neuron on every seed (2 ascents, same day: 99 / 100 / 99, errors 6 / 0 / 6; 53 / 57 / 55);
# - TMS 40-10: MMCS 1.000 / 0.998 / 1.000, ML2R 1.029-1.036 (2: 1.000 ± 0.000, 1.036 ± 0.001);
# - TMS 40-10 + identity: MMCS 1.000 / 1.000 / 0.985, ML2R 1.047-1.049, 10 live on the identity
#   site on every seed (2: 0.997 ± 0.004, 1.047 ± 0.006, 10 / 10 / 10);
# - TMS 5-2 + identity: MMCS 1.000, ML2R 0.998-1.000 (2: MMCS 1.000; ML2R over all C
#   0.80 / 1.000 / 0.999, the 0.80 a dead subcomponent's match; see run_tms).
VPD_CPU = dict(ppgd_inner_steps=1)
NEGLIGIBLE = 0.1  # a subcomponent under 10% of its site's largest norm is "negligible"
CANCELLATION_SWEEP = [2.0, 3.5, 4.5, 6.0, 9.0]  # β · n_out; SPD drops the pair above 3, VPD above 10.5


def target_of(name):
    """The experiment whose trained target ``name`` decomposes: an identity variant shares the
    plain TMS's (``with_identity``: the same weights bit for bit, one training run fewer)."""
    return name.removesuffix("-id") if name in TMS_NAMES else name


def train_target(name, seed, scale):
    """``(target, seconds)``: experiment ``name``'s target for ``seed``, trained single-threaded."""
    t0 = time.time()
    with single_threaded():
        target = EXPERIMENTS[name].train(seed, scale == "quick")
    return target, time.time() - t0


def run_one(target, name, seed, scale, method, out):
    """``(row, seconds)``: decompose ``target`` for experiment ``name`` with ``method`` and measure
    it; the seconds exclude the target's training, which the methods (and a TMS's identity
    variant) share."""
    if name != target_of(name):
        target = with_identity(target)
    run = run_tms if name in TMS_NAMES else run_resid
    return _timed(run, target, name, seed, scale, method, out)


def run_tms(target, name, seed, scale, method, out):
    dec = _reproduce(target, name, seed, scale, method)
    c = dec.components["linear1"]
    ci = M.one_hot_causal_importance(dec, target.n_features)
    x = torch.cat([_sample(dec, name, seed), 0.75 * torch.eye(target.n_features)])
    alive = {s: M.alive_subcomponents(g, 0.1) for s, g in dec.causal_importance(x).items()}
    live = {s: int(a.sum()) for s, a in alive.items()}
    # MMCS / ML2R match each column of W to a live `linear1` subcomponent (CI > 0.1 on some
    # input). Over all C, a dead one can win the cosine: on TMS 5-2 (2-d columns) VPD seed 0's
    # feature 4 was matched to a never-used subcomponent of norm 0.0014 at cos 1.0000 instead
    # of its live one (norm 1.13), which put that column's L2 ratio at 0.0003 and ML2R at 0.80.
    # The paper's all-subcomponent formula is kept as mmcs_all / ml2r_all.
    row = dict(mmcs=M.mmcs(target.W, c.U, c.V, alive["linear1"]),
               ml2r=M.ml2r(target.W, c.U, c.V, alive["linear1"]),
               mmcs_all=M.mmcs(target.W, c.U, c.V), ml2r_all=M.ml2r(target.W, c.U, c.V),
               id_err_linear1=M.identity_ci_error(ci["linear1"]),
               id_err_linear2=M.identity_ci_error(ci["linear2"]), live=live)
    if target.identity:
        row["identity_live"] = live["hidden_layers.0"]
        # The SPD paper's count for the identity (§4.1): subcomponents of non-negligible norm.
        c = dec.components["hidden_layers.0"]
        norms = M.subcomponent_norms(c.U, c.V)
        row["identity_sized"] = int((norms >= NEGLIGIBLE * norms.max()).sum())
    if seed == 0 and out is not None:
        plot_ci(ci, out / f"{name}_{method}_ci.png", dense={"hidden_layers.0"})
        plot_tms_columns(target, dec, out / f"{name}_{method}_columns.png")
    return row


def run_resid(target, name, seed, scale, method, out):
    dec = _reproduce(target, name, seed, scale, method)
    return resid_row(target, dec, out / f"{name}_{method}" if seed == 0 and out else None)


def resid_row(target, dec, plot=None):
    """The residual-MLP table's numbers for one decomposition; with a path prefix ``plot``, also
    its CI matrices (``<plot>_ci.png``) and W_out neuron reading (``<plot>_neurons.png``)."""
    ci = M.one_hot_causal_importance(dec, target.n_features)
    live = {s: M.alive_subcomponents(g, 0.1) for s, g in ci.items()}
    ins = [s for s in dec.sites if s.endswith("W_in")]
    outs = [s for s in dec.sites if s.endswith("W_out")]
    ci_out = torch.cat([ci[s] for s in outs], dim=1)
    live_out = torch.cat([live[s] for s in outs])
    W_in = torch.cat([dec.target_weight(s) for s in ins], 0)
    W_out = torch.cat([dec.target_weight(s) for s in outs], 1)
    nc_model = M.neuron_contributions(target.W_E, W_in, W_out)
    nc_sub = _subcomponent_nc(target, dec, ins, W_out)
    # Which neuron each live W_out subcomponent reads, and whether its CI follows that neuron.
    aligned, neurons, follows = 0, set(), []
    h = dec.run_target(0.75 * torch.eye(target.n_features))[1]
    for i, site in enumerate(outs):
        cos, axis = M.axis_alignment(dec.components[site].V)
        one = live[site] & (cos >= 0.9)
        aligned += int(one.sum())
        neurons |= {(i, int(a)) for a in axis[one]}
        on = h[site].detach()[:, axis[one]] > 0
        follows.append((on == (ci[site][:, one] > 0.1)).float().flatten())
    row = dict(
        # Per layer: a feature's component spans the layers (SPD paper §4.3), one
        # subcomponent of each layer's W_in.
        live_in=[int(live[s].sum()) for s in ins],
        id_err_in=[M.identity_ci_error(ci[s]) for s in ins],
        live_out=int(live_out.sum()),
        live_out_layers=[int(live[s].sum()) for s in outs],
        out_coactive=(ci_out[:, live_out] > 0.1).float().mean().item() if live_out.any() else 0.0,
        dense_err_out=sum(M.dense_ci_error(ci[s], target.d_mlp) for s in outs),
        out_aligned=aligned, out_neurons=len(neurons),
        out_follows=torch.cat(follows).mean().item() if aligned else float("nan"),
        nc_corr=torch.corrcoef(torch.stack([nc_model.flatten(), nc_sub.flatten()]))[0, 1].item(),
    )
    if plot is not None:
        plot_ci({"W_in (all layers)": torch.cat([ci[s] for s in ins], 1),
                 "W_out (all layers)": ci_out}, f"{plot}_ci.png", dense={"W_out (all layers)"})
        plot_neuron_alignment(dec, outs, live, f"{plot}_neurons.png")
    return row


def cancellation_row(bn, method):
    """SPD or VPD on the cancellation toy at importance coefficient ``bn / n_out``."""
    target = CancellationToy(n_pairs=1, n_features=4)
    x = CancellationData(1, 4)(2048, torch.Generator().manual_seed(123))
    pair = pair_indices(target)
    n_out = target.W.shape[0]
    cfg = toy_config("cancellation", method, coeff_minimality=bn / n_out)
    with single_threaded():
        dec = decompose_cancellation(target, cfg)
        g = dec.causal_importance(x)["linear"]
        with torch.no_grad():
            y, xs = dec.run_target(x)
            ci = dec.ci(xs).lower
        return dict(
            beta_n=bn, method=method,
            g_pair=g[:, pair].mean().item(),
            g_feature=g[:, :4][x[:, 1:] > 0].mean().item(),
            worst_single=M.single_ablation_errors(dec, x)["linear"][pair].max().item(),
            pgd_mse=pgd_recon(dec, x, y, ci, n_steps=40, kind="mse"),
            stoch_mse=_stochastic_mse(dec, x, y, ci))


def run_cancellation(jobs=1):
    """SPD vs VPD on the cancellation toy, sweeping the importance coefficient."""
    return _map(cancellation_row, [(bn, method) for bn in CANCELLATION_SWEEP
                                   for method in ("spd", "vpd")], jobs)


# ----------------------------------------------------------------------------------- helpers
def _map(fn, arg_tuples, jobs):
    """``[fn(*args) for args in arg_tuples]``, in ``jobs`` worker processes of one thread each
    (every run is single-threaded: a second core runs a second seed, not a faster step)."""
    if jobs <= 1 or len(arg_tuples) <= 1:
        return [fn(*args) for args in arg_tuples]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(jobs, len(arg_tuples)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, *zip(*arg_tuples)))


def _timed(fn, *args):
    """``(fn(*args), seconds)``: a run's own wall time, whichever process ran it."""
    t0 = time.time()
    return fn(*args), time.time() - t0


def _reproduce(target, name, seed, scale, method):
    overrides = ({**CPU_OVERRIDES.get(name, {}), **(VPD_CPU if method == "vpd" else {}),
                  **METHOD_OVERRIDES.get((name, method), {})} if scale == "cpu" else {})
    return reproduce(name, seed=seed, quick=scale == "quick", method=method, target=target,
                     **overrides)[1]


def _sample(dec, name, seed):
    data = EXPERIMENTS[name].data(dec.model)
    return data(4096, torch.Generator().manual_seed(seed + 777))


def _subcomponent_nc(target, dec, ins, W_out):
    """Eq. 12 over all layers: each layer's best W_in subcomponent per feature, concatenated."""
    parts, start = [], 0
    for s in ins:
        comp = dec.components[s]
        d = comp.d_out
        nc, _ = M.subcomponent_neuron_contributions(target.W_E, comp.U.detach(), comp.V.detach(),
                                                    W_out[:, start:start + d])
        parts.append(nc)
        start += d
    return torch.cat(parts, dim=1)


@torch.no_grad()
def _stochastic_mse(dec, x, y, ci, samples=8):
    gen = torch.Generator().manual_seed(0)
    total = 0.0
    for _ in range(samples):
        masks, dmasks = masks_from_sources(ci, sample_sources(ci, gen))
        total += mse_recon_loss(y, dec.run_masked(x, masks, dmasks)).item()
    return total / samples


def _mean_std(values):
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="same as --scale quick")
    parser.add_argument("--scale", choices=["quick", "cpu", "paper"], default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--method", choices=["spd", "vpd", "both"], default="spd")
    parser.add_argument("--experiments", nargs="+", default=TMS_NAMES + ["resid_mlp1", "cancellation"],
                        help=f"any of {TMS_NAMES + RESID_NAMES + ['cancellation']}")
    parser.add_argument("--out", type=Path, default=Path("runs/spd_toys"))  # runs/ is git-ignored
    parser.add_argument("--jobs", type=int, default=min(3, os.cpu_count() or 1),
                        help="seeds run in parallel, one single-threaded process each")
    args = parser.parse_args(argv)
    scale = "quick" if args.quick else args.scale
    methods = ["spd", "vpd"] if args.method == "both" else [args.method]
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    print(f"scale={scale} seeds={args.seeds} methods={methods} torch={torch.__version__}", flush=True)

    tms = [n for n in TMS_NAMES if n in args.experiments]
    resid = [n for n in RESID_NAMES if n in args.experiments]
    # Two pools of single-threaded runs, longest first, so both cores stay busy: first every
    # (target, seed) is trained once, then every (experiment, seed, method) decomposes its
    # target (a run at a time is the pool's unit, so the cores finish close together).
    bases = [n for n in LONGEST_FIRST if n in {target_of(e) for e in tms + resid}]
    trained = dict(zip([(n, seed) for n in bases for seed in args.seeds],
                       _map(train_target, [(n, seed, scale) for n in bases for seed in args.seeds],
                            args.jobs)))
    target_s = {(n, seed): trained[target_of(n), seed][1]
                for n in tms + resid for seed in args.seeds}
    keys = [(n, seed, method) for n in LONGEST_FIRST if n in tms + resid
            for method in reversed(methods) for seed in args.seeds]
    done = dict(zip(keys, _map(run_one, [(trained[target_of(n), seed][0], n, seed, scale, method,
                                          args.out) for n, seed, method in keys], args.jobs)))
    for method in methods:
        if tms:
            print(f"\n== TMS ({method}) vs SPD paper Table 1 ==")
            print(f"{'model':<14}{'MMCS':>16}{'paper':>16}{'ML2R':>16}{'paper':>16}"
                  f"{'id-CI err l1/l2':>17}{'identity live/sized':>21}{'time/seed':>11}"
                  f"{'target':>8}")
        for name in tms:
            timed = [done[name, seed, method] for seed in args.seeds]
            rows = [r for r, _ in timed]
            per = statistics.mean(seconds for _, seconds in timed)
            per_target = statistics.mean(target_s[name, seed] for seed in args.seeds)
            idl = ("/".join(f"{r['identity_live']}|{r['identity_sized']}" for r in rows)
                   if "identity_live" in rows[0] else "-")
            errs = ",".join(f"{r['id_err_linear1']}/{r['id_err_linear2']}" for r in rows)
            print(f"{name:<14}{_mean_std([r['mmcs'] for r in rows]):>16}{PAPER_TABLE1[name][0]:>16}"
                  f"{_mean_std([r['ml2r'] for r in rows]):>16}{PAPER_TABLE1[name][1]:>16}"
                  f" {errs:>17}{idl:>21}{per:>10.0f}s{per_target:>7.0f}s", flush=True)
        if tms:
            print(f"(identity live|sized: live at CI > 0.1 on any input | subcomponents of "
                  f"norm ≥ {NEGLIGIBLE:g} × the site's largest, the paper's count; expect n_hidden."
                  f" time/seed: decomposition and metrics; target: its training, shared by the "
                  f"methods and by a model's identity variant; MMCS / ML2R match each column "
                  f"of W to a live linear1 subcomponent, results.json's mmcs_all / ml2r_all to "
                  f"any of them)")

        if resid:
            print(f"\n== Residual MLPs ({method}); paper: W_in one subcomponent per feature, "
                  "W_out exactly d_mlp subcomponents (Fig. 8) ==")
            print(f"{'model':<12}{'seed':>5}{'W_in live':>12}{'id-CI err':>10}{'W_out live':>11}"
                  f"{'dense err':>10}{'one neuron':>11}{'neurons':>8}{'follows':>8}"
                  f"{'co-active':>10}{'NC corr':>9}{'time':>8}{'target':>8}")
        for name in resid:
            for seed in args.seeds:
                r, seconds = done[name, seed, method]
                live_in, err_in = ("/".join(map(str, r[k])) for k in ("live_in", "id_err_in"))
                live_out = "/".join(map(str, r["live_out_layers"]))
                print(f"{name:<12}{seed:>5}{live_in:>12}{err_in:>10}"
                      f"{live_out:>11}{r['dense_err_out']:>10}{r['out_aligned']:>11}"
                      f"{r['out_neurons']:>8}{r['out_follows']:>8.2f}{r['out_coactive']:>10.2f}"
                      f"{r['nc_corr']:>9.3f}{seconds:>7.0f}s{target_s[name, seed]:>7.0f}s",
                      flush=True)
        if resid:
            print("(one neuron: live W_out subcomponents whose read direction is within "
                  "cos 0.9 of one neuron; neurons: distinct neurons they read; follows: how often "
                  "CI > 0.1 coincides with that neuron firing, on one-hot inputs)")

    cancellation = []
    if "cancellation" in args.experiments:
        print("\n== Cancellation toy: a +3/-3 pair on y, U V frozen at the mechanisms, CI trained ==")
        print("(β·n_out: SPD's optimum drops the pair above 3, VPD's above 10.5; features are kept "
              "up to 12 / 24)")
        print(f"{'β·n_out':>8}{'method':>7}{'g(A,B)':>8}{'g(feat)':>9}{'worst single ablation':>23}"
              f"{'stoch MSE':>11}{'PGD MSE':>9}")
        cancellation = run_cancellation(args.jobs)
        for r in cancellation:
            print(f"{r['beta_n']:>8.1f}{r['method']:>7}{r['g_pair']:>8.3f}{r['g_feature']:>9.3f}"
                  f"{r['worst_single']:>23.3f}{r['stoch_mse']:>11.4f}{r['pgd_mse']:>9.4f}", flush=True)

    elapsed = time.time() - start
    runs = [dict(model=n, seed=seed, method=method, seconds=round(sec, 1),
                 target_seconds=round(target_s[n, seed], 1), **row)
            for (n, seed, method), (row, sec) in done.items()]
    (args.out / "results.json").write_text(json.dumps(dict(
        scale=scale, seeds=args.seeds, jobs=args.jobs, torch=torch.__version__,
        elapsed_s=round(elapsed), runs=runs, cancellation=cancellation), indent=1))
    print(f"\nfigures and results.json in {args.out}/   elapsed {elapsed:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
