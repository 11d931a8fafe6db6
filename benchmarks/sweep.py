"""A sweep of the knobs that trade sparsity against adversarial faithfulness, on a tiny target
trained in-process; prints a Pareto table and writes it as markdown and JSON.

    python benchmarks/sweep.py --quick --out sweep.md          # 3 points, a few minutes on CPU
    python benchmarks/sweep.py --out sweep.md                  # the full grid (hours on CPU)
    python benchmarks/sweep.py --out s.md --grid '{"ppgd_lr": [0.01, 0.1]}' --seeds 2
    python benchmarks/sweep.py --target-run runs/main --grid '{"coeff_minimality": [3e-4]}' --out s.md
    python benchmarks/sweep.py --from-runs runs/main runs/sw1 --out s.md   # tabulate finished runs

``--target-run RUN`` sweeps on the default main job's target (``RUN/target``, as ``tl-vpd main``
trained it) from the packaged ``vpd.yaml``, evaluated as ``tl-vpd main`` evaluates (8,192 tokens, 3
restarts) with the ladder 5-20. ``--from-runs`` builds the table from run directories that
``tl-vpd decompose`` + ``tl-vpd evaluate`` (or ``tl-vpd main``) already finished — e.g. points run
as separate one-thread processes side by side — reading each run's ``eval.json`` and its
``decomp/config.yaml`` (the point = the fields that differ from the packaged ``vpd.yaml``).

Target: a 2-layer LLaMA-style model (RMSNorm, rotary, GELU MLP) trained on the standard-library
corpus (:func:`tl_vpd.data.default_corpus`). Each grid point is a VPD run whose config is the
base config with the point's fields changed; it is evaluated by :func:`tl_vpd.evaluate.evaluate`
(PGD with sources shared across all attacked tokens, several random restarts).

Columns: L0 (total per token) and L0/alive; PGD-20 ÷ stochastic KL and PGD-20 ÷ zero-ablation KL
(mean over restarts; "max" = the strongest restart), both on the attacked tokens; the
stochastic KL; CE recovered with every mask 1 (Δ excluded: how far U V is from W), under
stochastic masks and under rounded CI > 0. A point is Pareto-optimal
("*") when no other point has both a lower L0/alive and a lower PGD-20 ÷ zero-ablation KL.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

import tl_vpd
from tl_vpd.data import default_corpus
from tl_vpd.evaluate import evaluate
from tl_vpd.pipeline import load_target_stage, packaged_config
from tl_vpd.report import EvalReport
from tl_vpd.target import target_config, train_target

# The grid of the full sweep: every combination.
FULL_GRID = {
    "ppgd_lr": [0.01, 0.03, 0.1],
    "adversarial_routing": ["same", "all"],
    "p_anneal_end_frac": [0.6, 1.0],
    "coeff_minimality": [1e-4, 2e-4, 4e-4],
    "ci_fn": ["shared_mlp", "global_transformer"],
}
# The points of --quick: the defaults, the adversary fixes, an earlier end of the p anneal.
QUICK_POINTS = [
    {},
    {"ppgd_lr": 0.1, "adversarial_routing": "all"},
    {"p_anneal_end_frac": 0.6},
]

SIZES = {  # target, corpus, decomposition and evaluation sizes of each mode
    "quick": dict(seq_len=32, vocab=512, max_bytes=400_000, d_model=32, d_mlp=128,
                  target_steps=200, C=32, steps=200, batch_size=8, pgd_tokens=4096, restarts=2,
                  pgd_steps=(20,)),
    "full": dict(seq_len=64, vocab=1024, max_bytes=2_000_000, d_model=64, d_mlp=256,
                 target_steps=400, C=64, steps=1000, batch_size=8, pgd_tokens=8192, restarts=3,
                 pgd_steps=(10, 20, 40)),
    # --target-run: the main job's evaluation sizes (tl-vpd main's defaults), ladder up to 20
    "main": dict(packaged=True, pgd_tokens=8192, restarts=3, pgd_steps=(5, 10, 20), n_batches=8,
                 eval_batch=16),
}


def packaged_vpd() -> tl_vpd.VPDConfig:
    """The packaged vpd.yaml: the base of ``--target-run`` and what ``--from-runs`` diffs against."""
    return tl_vpd.VPDConfig.from_file(packaged_config("vpd.yaml"))


def train_tiny_target(size: dict, cache_dir: str | None):
    """The sweep's target: its corpus and its training run (model and validation curve)."""
    corpus = default_corpus(seq_len=size["seq_len"], vocab_size=size["vocab"],
                            max_bytes=size["max_bytes"], cache_dir=cache_dir)
    cfg = target_config(corpus.vocab_size, d_model=size["d_model"], n_layers=2, n_heads=4,
                        d_mlp=size["d_mlp"], n_ctx=size["seq_len"])
    run = train_target(cfg, corpus.train, corpus.val, steps=size["target_steps"], batch_size=32,
                       lr=5e-3, warmup_steps=20, eval_every=max(1, size["target_steps"] // 8),
                       eval_batches=4, progress=False)
    return corpus, run


def base_config(size: dict) -> tl_vpd.VPDConfig:
    """The config every point starts from: the packaged vpd.yaml for ``--target-run``, else the
    quick_vpd.yaml recipe at this size."""
    if size.get("packaged"):
        steps = {"steps": size["steps"]} if "steps" in size else {}
        return packaged_vpd().replace(log_every=0, progress=False, checkpoint_every=0, **steps)
    return tl_vpd.VPDConfig(C=size["C"], steps=size["steps"], batch_size=size["batch_size"],
                            seq_len=size["seq_len"], lr=2e-3, coeff_faithfulness=1e3,
                            faithfulness_warmup_steps=200, log_every=0, progress=False)


def grid_points(grid: dict) -> list[dict]:
    """Every combination of the grid's values, as field -> value dicts."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def run_point(point: dict, seed: int, corpus, run, size: dict) -> dict:
    """Decompose with the point's config, evaluate, and keep the table's numbers."""
    cfg = base_config(size).replace(seed=seed, **point)
    t = time.perf_counter()
    dec = tl_vpd.decompose(run.model, cfg, corpus.train,
                           eval_data=corpus.val if cfg.eval_every else None)
    train_s = time.perf_counter() - t
    rep = evaluate(dec, corpus.val, n_batches=size.get("n_batches", 4),
                   batch_size=size.get("eval_batch", 16), pgd_steps=size["pgd_steps"],
                   pgd_tokens=size["pgd_tokens"], pgd_restarts=size["restarts"],
                   target_curve=run.curve, seed=seed, progress=False)
    return report_row(rep, point, seed, train_s, time.perf_counter() - t - train_s)


def report_row(rep: EvalReport, point: dict, seed: int, train_s: float | None,
               eval_s: float | None) -> dict:
    """The table's numbers from one evaluation report."""
    pgd = rep.pgd(20)
    return {
        "point": point, "seed": seed,
        "l0": rep.total["l0"], "alive": rep.total["alive"], "l0_per_alive": rep.total["l0_per_alive"],
        "alive_per_C": rep.total["alive"] / rep.total["C"],
        "pgd20_max_per_stochastic": pgd["per_stochastic_max"],
        "ce_recovered_unmasked": rep.row("unmasked")["ce_recovered"],
        "pgd20_per_stochastic": pgd["per_stochastic"], "pgd20_per_zero": pgd["per_zero"],
        "pgd20_max_per_zero": pgd["per_zero_max"], "pgd20_kl": pgd["kl"],
        "stochastic_kl": rep.row("stochastic")["kl"],
        "ce_recovered_stochastic": rep.row("stochastic")["ce_recovered"],
        "ce_recovered_rounded": rep.row("rounded CI > 0")["ce_recovered"],
        "train_s": train_s, "eval_s": eval_s,
        "adversarial": rep.adversarial, "adversarial_reference": rep.adversarial_reference,
    }


def rows_from_runs(run_dirs: list[str]) -> list[dict]:
    """Rows of finished runs: each run's ``eval.json``, its point = the fields of
    ``decomp/config.yaml`` that differ from the packaged ``vpd.yaml`` (no timings: ``—``)."""
    base = packaged_vpd().to_dict()
    ignore = {"progress", "log_every", "eval_every", "checkpoint_every"}
    rows = []
    for d in map(Path, run_dirs):
        report, cfg_path = d / "eval.json", d / "decomp" / "config.yaml"
        for f in (report, cfg_path):
            if not f.is_file():
                raise FileNotFoundError(f"{f} is missing: --from-runs needs runs that "
                                        "`tl-vpd decompose` and `tl-vpd evaluate` finished")
        cfg = tl_vpd.VPDConfig.from_file(cfg_path).to_dict()
        point = {k: v for k, v in cfg.items() if k not in ignore and base.get(k) != v}
        rows.append(report_row(EvalReport.from_json(report), point, cfg["seed"], None, None))
        rows[-1]["run"] = str(d)
    return rows


def mark_pareto(rows: list[dict]) -> None:
    """``pareto`` = no other row is at least as good in both L0/alive and PGD-20 ÷ zero-ablation
    and better in one (lower is better in both)."""
    def key(r):
        return (r["l0_per_alive"] if r["l0_per_alive"] is not None else float("inf"),
                r["pgd20_per_zero"] if r["pgd20_per_zero"] is not None else float("inf"))

    for r in rows:
        a = key(r)
        r["pareto"] = not any(key(o)[0] <= a[0] and key(o)[1] <= a[1] and key(o) != a
                              for o in rows if o is not r)


COLUMNS = [("pareto", "Pareto"), ("config", "config (changes from the base)"), ("seed", "seed"),
           ("l0", "L0"), ("l0_per_alive", "L0/alive"), ("alive_per_C", "alive/C"),
           ("pgd20_per_stochastic", "PGD-20 ÷ stoch."), ("pgd20_max_per_stochastic", "max ÷ stoch."),
           ("pgd20_per_zero", "PGD-20 ÷ zero"), ("pgd20_max_per_zero", "max PGD-20 ÷ zero"),
           ("stochastic_kl", "stoch. KL"), ("ce_recovered_unmasked", "CE rec. (unmasked)"),
           ("ce_recovered_stochastic", "CE rec. (stoch.)"),
           ("ce_recovered_rounded", "CE rec. (CI>0)"), ("train_s", "train s")]


def _cell(key: str, row: dict) -> str:
    if key == "pareto":
        return "*" if row["pareto"] else ""
    if key == "config":
        return ", ".join(f"{k}={v}" for k, v in row["point"].items()) or "(base)"
    v = row[key]
    if v is None:
        return "—"
    if key.startswith("ce_recovered"):
        return f"{100 * v:.1f}%"
    if isinstance(v, int):
        return str(v)
    return f"{v:.1f}" if key.endswith("_s") else f"{v:.4g}"


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table, lowest L0/alive first."""
    rows = sorted(rows, key=lambda r: (r["l0_per_alive"] or 0.0, r["pgd20_per_zero"] or 0.0))
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cell(k, r) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 points on a smaller target")
    p.add_argument("--target-run", help="sweep on RUN/target (the main job's) from vpd.yaml")
    p.add_argument("--from-runs", nargs="+", metavar="RUN", help="tabulate finished runs")
    p.add_argument("--out", required=True, help="where the table goes (.md; the JSON beside it)")
    p.add_argument("--grid", help="JSON {field: [values]} replacing the grid (its product)")
    p.add_argument("--seeds", type=int, default=1, help="decomposition seeds per point")
    p.add_argument("--steps", type=int, help="decomposition steps (default: the mode's)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--cache-dir", help="cache the tokenized corpus here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = ("runs" if args.from_runs else "main" if args.target_run
            else "quick" if args.quick else "full")
    size = dict(SIZES.get(mode, {}))
    if mode == "runs":
        rows = rows_from_runs(args.from_runs)
        base = packaged_vpd().to_dict()
    else:
        if args.steps:
            size["steps"] = args.steps
        points = (grid_points(json.loads(args.grid)) if args.grid
                  else QUICK_POINTS if args.quick else grid_points(FULL_GRID))
        for point in points:  # fail before any training on a mistyped field or value
            base_config(size).replace(**point)
        t = time.perf_counter()
        if mode == "main":
            model, corpus, curve = load_target_stage(Path(args.target_run) / "target")
            run = argparse.Namespace(model=model, curve=curve)
        else:
            corpus, run = train_tiny_target(size, args.cache_dir)
        print(f"target: val CE {run.curve[0]['val_ce']:.3f} -> {run.curve[-1]['val_ce']:.3f} "
              f"({time.perf_counter() - t:.0f} s); {len(points)} point(s) × {args.seeds} seed(s)",
              flush=True)
        rows = []
        for i, point in enumerate(points):
            for seed in range(args.seeds):
                rows.append(run_point(point, seed, corpus, run, size))
                r = rows[-1]
                print(f"[{i + 1}/{len(points)} seed {seed}] {point or '(base)'}: L0/alive "
                      f"{r['l0_per_alive']:.3g}, PGD-20 ÷ zero {r['pgd20_per_zero']:.3g}, "
                      f"÷ stoch. {r['pgd20_per_stochastic']:.3g} ({r['train_s']:.0f} + "
                      f"{r['eval_s']:.0f} s)", flush=True)
        base = base_config(size).to_dict()
    mark_pareto(rows)
    table = markdown_table(rows)
    print("\n" + table)
    out = Path(args.out)
    md, js = (out.with_suffix(".md"), out) if out.suffix == ".json" else (out, out.with_suffix(".json"))
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(f"# VPD sweep ({mode})\n\nBase config: {json.dumps(base, default=str)}\n\n"
                  f"{table}\n")
    js.write_text(json.dumps({"mode": mode, "size": size, "base_config": base, "rows": rows},
                             indent=2, default=str) + "\n")
    print(f"\nwritten to {md} and {js}")


if __name__ == "__main__":
    main()
