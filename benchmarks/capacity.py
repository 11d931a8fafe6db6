"""The VPD paper's capacity sweep on the main job's own target: the same recipe at C ×0.5, ×1,
×2 and ×4, and how many subcomponents each decomposition keeps alive.

    python benchmarks/capacity.py --target-run runs/main --out benchmarks/results/capacity_default
    python benchmarks/capacity.py --target-run runs/main --reuse 1=runs/main --out cap  # ×1 done
    python benchmarks/capacity.py --quick --target-run runs/q --out cap_quick  # quick_vpd.yaml

For each multiple ``m`` the config is the packaged ``vpd.yaml`` (``--quick``: ``quick_vpd.yaml``;
``--config``: any) with ``C = round(m · C)`` and nothing else changed, decomposed on
``RUN/target`` into ``--runs/x<m>`` and evaluated as ``tl-vpd evaluate`` does (16,384 validation
tokens; PGD with one source per subcomponent shared over 8,192 tokens, 3 restarts; only the
``--pgd-steps`` attacks, default 20). A run directory that already holds the finished
decomposition (or ``--reuse m=DIR``, e.g. the main job's ×1) is read, not re-run; one whose config
differs is refused, and a run's existing ``eval.json`` is never overwritten (an evaluation
the sweep needs beside it goes to ``--runs/x<m>.eval.json``). An interrupted run continues from
its newest checkpoint when the command is re-run. The default target's full sweep takes about
2 hours on a 2-core CPU.

Columns: alive (mean CI > 1e-6 on the evaluated tokens: the report's count) of the total capacity
(C × matrices); how many have mean CI > 1e-4 (used regularly rather than in a rare tail, from the
report's CI spectrum); L0 per token, CE recovered under stochastic masks, the strongest PGD restart
against zero-ablation (both KLs to the target), and "split vs ×1": the paper's geometric
feature-splitting measure (its appendix on feature splitting) applied per matrix — the fraction
of the ×1 decomposition's alive output directions (U columns) that match more than one alive
direction of the ×m decomposition (|cos| > 0.5), averaged over matrices. The paper's claims
(section "No feature splitting"): the alive count stays flat (~6,500–7,000) from ×0.5 to ×4,
and sparsity and reconstruction stay about constant.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tl_vpd.baselines import mean_split_fraction
from tl_vpd.config import VPDConfig
from tl_vpd.decomposition import Decomposition
from tl_vpd.evaluate import _batches, evaluate
from tl_vpd.pipeline import (DEFAULT_EVAL, decompose_stage, evaluate_stage, load_target_stage,
                             packaged_config)
from tl_vpd.report import ALIVE_THRESHOLD
from tl_vpd.tables import text_table

MULTIPLES = (0.5, 1, 2, 4)
PAPER_ALIVE = "~6,500–7,000, flat from ×0.5 to ×4"
# A second count: subcomponents whose mean CI exceeds 1e-4 (used regularly, not in a rare tail).
REGULAR_THRESHOLD = 1e-4
COLS = [("multiple", "capacity"), ("C", "C/matrix"), ("capacity", "total C"), ("alive", "alive"),
        ("alive_frac", "alive/C"), ("regular", "mean CI > 1e-4"), ("l0", "L0"),
        ("l0_per_alive", "L0/alive"),
        ("stoch_ce_recovered", "CE rec. (stoch.)"), ("pgd_per_zero_max", "PGD max ÷ zero"),
        ("split", "split vs ×1"), ("decompose_s", "decomp. s")]


def run_config(base: VPDConfig, mult: float) -> VPDConfig:
    """The sweep's config at ``mult`` × the base C (at least 1); every other field unchanged."""
    return base.replace(C=max(1, round(base.C * mult)))


def alive_directions(dec: Decomposition, data, n_batches: int, batch_size: int, seed: int = 0
                     ) -> dict[str, torch.Tensor]:
    """Per site, the output directions (U columns, one per row) of the subcomponents alive on the
    evaluation's batches (the same stream, seed and count as :func:`tl_vpd.evaluate.evaluate`)."""
    sums, n = {}, 0
    with torch.no_grad():
        for batch in _batches(dec, data, n_batches, batch_size, seed):
            for site, g in dec.causal_importance(batch).items():
                sums[site] = sums.get(site, 0) + g.flatten(0, -2).double().sum(0)
            n += batch.numel()
    return {site: dec.components[site].U.detach().T[s / n > ALIVE_THRESHOLD].float()
            for site, s in sums.items()}


def capacity_row(mult: float, cfg: VPDConfig, report: dict, pgd_steps: int) -> dict:
    """One table row from a run's ``eval.json`` (a dict)."""
    tot = report["total"]
    stoch = next(r for r in report["recon"] if r["mode"] == "stochastic")
    pgd = next((a for a in report["adversarial"] if a["pgd_steps"] == pgd_steps), None)
    means = [v for site in report.get("ci_spectrum", []) for v in site["mean_ci"]]
    return {"mult": mult, "multiple": f"×{mult:g}", "C": cfg.C, "capacity": tot["C"],
            "alive": tot["alive"], "alive_frac": tot["alive"] / tot["C"],
            "regular": sum(v > REGULAR_THRESHOLD for v in means) if means else None,
            "l0": tot["l0"],
            "l0_per_alive": tot["l0_per_alive"], "stoch_ce_recovered": stoch["ce_recovered"],
            "pgd_per_zero_max": None if pgd is None else pgd["per_zero_max"]}


def add_splitting(rows: list[dict], dirs: dict[float, dict[str, torch.Tensor]]) -> None:
    """``split`` of every row against the ×1 row's alive directions, averaged over sites."""
    if 1 not in dirs:
        return
    for row in rows:
        other = dirs[row["mult"]]
        row["split"] = mean_split_fraction([(d, other[s]) for s, d in dirs[1].items()],
                                           absolute=True)


def tables(rows: list[dict]) -> str:
    return (text_table(COLS, rows)
            + f"\n\nPaper (4-layer LM, C ×0.5–×4 of 38,912): alive {PAPER_ALIVE}; sparsity and "
            "reconstruction about constant.")


def plot(rows: list[dict], path: Path | None = None):
    """Alive against total capacity (with y = x), and L0 / fidelity against the multiple; saved
    to ``path`` (and closed) if given, else returned (a notebook shows it)."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    cap = [r["capacity"] for r in rows]
    a.plot(cap, [r["alive"] for r in rows], "o-", color="tab:purple",
           label="VPD alive (mean CI > 1e-6)")
    if all(r.get("regular") is not None for r in rows):
        a.plot(cap, [r["regular"] for r in rows], "s--", color="tab:purple", alpha=0.6,
               label="VPD mean CI > 1e-4")
    a.plot([0, max(cap)], [0, max(cap)], "k--", lw=1, label="y = x (all alive)")
    for r in rows:
        a.annotate(r["multiple"], (r["capacity"], r["alive"]), textcoords="offset points",
                   xytext=(4, -12), fontsize=8)
    a.set(xlabel="total capacity (C × matrices)", ylabel="alive subcomponents",
          title="alive count vs capacity")
    a.legend()
    m = [r["mult"] for r in rows]
    b.plot(m, [r["l0_per_alive"] for r in rows], "o-", label="L0 / alive")
    b.plot(m, [1 - r["stoch_ce_recovered"] for r in rows], "s-", label="1 − CE rec. (stochastic)")
    if all(r["pgd_per_zero_max"] is not None for r in rows):
        b.plot(m, [r["pgd_per_zero_max"] for r in rows], "^-", label="PGD max ÷ zero-abl.")
    b.set(xscale="log", xlabel="capacity multiple", title="sparsity and faithfulness")
    b.set_xticks(m, [r["multiple"] for r in rows])
    b.minorticks_off()
    b.legend()
    fig.tight_layout()
    if path is None:
        return fig
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def sweep(model, corpus, curve, runs: Path, base: VPDConfig, multiples,
          reuse: dict[float, Path], pgd_steps: int, progress: bool = False, log=print
          ) -> list[dict]:
    """Decompose and evaluate what is missing, then tabulate every multiple.

    Arguments:
        model, corpus, curve: the target, its corpus (``train`` / ``val``) and training curve,
            as :func:`tl_vpd.pipeline.load_target_stage` returns them.
        runs: where the run directories ``x<m>`` (and their configs ``x<m>.yaml``) go.
        base: the ×1 config.
        multiples: the capacity multiples (1 among them, for the splitting column).
        reuse: finished run directories to use for some multiples instead.
        pgd_steps: the PGD attack of the table (run if a reused report lacks it).
    """
    eval_kw = dict(DEFAULT_EVAL, pgd_steps=(pgd_steps,))
    rows, dirs = [], {}
    runs.mkdir(parents=True, exist_ok=True)
    for mult in multiples:
        cfg = run_config(base, mult)
        out = reuse.get(mult, runs / f"x{mult:g}")
        out.mkdir(parents=True, exist_ok=True)
        cfg_path = runs / f"x{mult:g}.yaml"
        cfg.to_file(cfg_path)
        t = time.perf_counter()
        dec, trained = decompose_stage(model, corpus, out, cfg_path, progress=progress)
        report = _report(model, corpus, curve, out, runs / f"x{mult:g}.eval.json", dec,
                         pgd_steps, eval_kw, progress)
        row = capacity_row(mult, cfg, report, pgd_steps)
        row["decompose_s"] = time.perf_counter() - t if trained else None  # None: loaded
        rows.append(row)
        dirs[mult] = alive_directions(dec, corpus.val, eval_kw["n_batches"],
                                      eval_kw["batch_size"])
        log(f"×{mult:g} (C={cfg.C}, {out}): alive {row['alive']} of {row['capacity']}, "
            f"L0 {row['l0']:.1f}")
    add_splitting(rows, dirs)
    return rows


def _has_attack(path: Path, pgd_steps: int) -> dict | None:
    """The report at ``path`` if it exists and holds the ``pgd_steps`` attack."""
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return report if any(a["pgd_steps"] == pgd_steps for a in report["adversarial"]) else None


def _report(model, corpus, curve, out: Path, own: Path, dec, pgd_steps: int, eval_kw: dict,
            progress: bool) -> dict:
    """The run's ``eval.json`` if it has the table's attack, else the sweep's own evaluation
    (``own``). A run's existing ``eval.json`` is never overwritten (e.g. the main job's, with its
    whole PGD ladder): a fresh run directory gets one, any other the sweep's file."""
    for path in (out / "eval.json", own):
        if (report := _has_attack(path, pgd_steps)) is not None:
            return report
    if not (out / "eval.json").is_file():
        evaluate_stage(model, corpus, curve, out, progress=progress, **eval_kw)
        return json.loads((out / "eval.json").read_text())
    evaluate(dec, corpus.val, target_curve=curve, progress=progress, **eval_kw).save_json(own)
    return json.loads(own.read_text())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target-run", type=Path, required=True,
                   help="a run directory with a trained target (RUN/target, as `tl-vpd main` "
                        "or `tl-vpd train-target` wrote it)")
    p.add_argument("--runs", type=Path, help="where the sweep's run directories go "
                                             "(default: TARGET_RUN/capacity)")
    p.add_argument("--quick", action="store_true", help="the packaged quick_vpd.yaml recipe")
    p.add_argument("--config", type=Path, help="the ×1 VPDConfig YAML (default: packaged)")
    p.add_argument("--multiples", type=float, nargs="+", default=list(MULTIPLES))
    p.add_argument("--reuse", nargs="*", default=[], metavar="M=DIR",
                   help="use the finished run in DIR for multiple M (its config must match)")
    p.add_argument("--pgd-steps", type=int, default=20)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, help="write OUT.md, OUT.json and OUT.png")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import matplotlib

    matplotlib.use("Agg")
    reuse = {}
    for item in args.reuse:
        mult, sep, path = item.partition("=")
        if not sep:
            p.error(f"--reuse takes M=DIR, got {item!r}")
        reuse[float(mult)] = Path(path)
    if 1 not in args.multiples:
        p.error("--multiples must include 1 (splitting is measured against the ×1 run)")
    base = VPDConfig.from_file(args.config or packaged_config(
        "quick_vpd.yaml" if args.quick else "vpd.yaml"))
    t = time.perf_counter()
    model, corpus, curve = load_target_stage(args.target_run / "target")
    rows = sweep(model, corpus, curve, args.runs or args.target_run / "capacity", base,
                 args.multiples, reuse, args.pgd_steps, not args.no_progress,
                 log=lambda s: print(s, flush=True))
    text = tables(rows)
    print("\n" + text + f"\n\ntotal {time.perf_counter() - t:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
        plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
