"""The ``tl-vpd`` command line: train a target, decompose it, evaluate the decomposition.

::

    tl-vpd train-target --out RUN [--config target.yaml] [--steps N] [--quick]
    tl-vpd decompose --target RUN/target --out RUN [--config vpd.yaml] [--resume]
    tl-vpd evaluate --run RUN
    tl-vpd main [--out runs/main] [--quick]

Argument parsing and printing only: the stages, their configs and the run directory they share
are :mod:`tl_vpd.pipeline` (file names: :mod:`tl_vpd.layout`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import torch

from tl_vpd.layout import DECOMP_DIR, DECOMPOSITION_DIR, EVAL_FILE, TARGET_DIR
from tl_vpd.pipeline import (
    DEFAULT_EVAL,
    QUICK_EVAL,
    RunDirError,
    decompose_stage,
    evaluate_stage,
    load_target_stage,
    stage_config,
    train_target_stage,
    unfinished_decomposition,
)

__all__ = ["main"]


# ------------------------------------------------------------------------------ commands
def _cmd_train_target(args) -> None:
    out = Path(args.out)
    t = time.perf_counter()
    config = stage_config(args.config, args.quick, "target.yaml")
    _, _, curve, trained = train_target_stage(out, config, args.steps, not args.no_progress)
    verb = "trained" if trained else "found (already trained)"
    print(f"target {verb} in {out / TARGET_DIR} ({time.perf_counter() - t:.1f} s); "
          f"val CE {curve[0]['val_ce']:.3f} -> {curve[-1]['val_ce']:.3f}")


def _cmd_decompose(args) -> None:
    out = Path(args.out)
    model, corpus, _ = load_target_stage(Path(args.target))
    t = time.perf_counter()
    dec, _ = decompose_stage(model, corpus, out, stage_config(args.config, args.quick, "vpd.yaml"),
                             args.resume, not args.no_progress)
    print(f"decomposition saved to {out / DECOMP_DIR / DECOMPOSITION_DIR} "
          f"({time.perf_counter() - t:.1f} s)\n{dec!r}")


def _cmd_evaluate(args) -> None:
    out = Path(args.run)
    model, corpus, curve = load_target_stage(Path(args.target) if args.target else out / TARGET_DIR)
    report = evaluate_stage(model, corpus, curve, out, not args.no_progress, **_eval_kw(args))
    print(report)
    print(f"\nsaved to {out / EVAL_FILE}")


def _cmd_main(args) -> None:
    out = Path(args.out)
    progress = not args.no_progress
    timings = []

    def stage(name, fn):
        t = time.perf_counter()
        result = fn()
        timings.append((name, time.perf_counter() - t))
        print(f"[{name}] {timings[-1][1]:.1f} s", flush=True)
        return result

    model, corpus, curve, trained = stage("target", lambda: train_target_stage(
        out, stage_config(args.target_config, args.quick, "target.yaml"), None, progress))
    print(f"target {'trained' if trained else 'found'} in {out / TARGET_DIR}: "
          f"val CE {curve[0]['val_ce']:.3f} -> {curve[-1]['val_ce']:.3f}; {corpus}")
    dec, fresh = stage("decompose", lambda: decompose_stage(
        model, corpus, out, stage_config(args.vpd_config, args.quick, "vpd.yaml"),
        resume=unfinished_decomposition(out), progress=progress))
    print(f"decomposition {'trained' if fresh else 'found'} in {out / DECOMP_DIR}\n{dec!r}")
    report = stage("evaluate", lambda: evaluate_stage(model, corpus, curve, out, progress,
                                                       **_eval_kw(args)))
    print()
    print(report)
    print(f"\nsaved to {out / EVAL_FILE}")
    print("\ntimings: " + ", ".join(f"{n} {s:.1f} s" for n, s in timings)
          + f", total {sum(s for _, s in timings):.1f} s")


def _eval_kw(args) -> dict:
    kw = dict(QUICK_EVAL if args.quick else DEFAULT_EVAL)
    for key in ("n_batches", "batch_size", "pgd_batches", "pgd_tokens", "pgd_restarts", "seed"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    if args.pgd_steps is not None:
        kw["pgd_steps"] = tuple(int(n) for n in args.pgd_steps.split(","))
    return kw


# ------------------------------------------------------------------------------ parsing
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tl-vpd", description="adVersarial Parameter Decomposition "
                                "of TransformerLens models: train a target, decompose, evaluate.")
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error instead of one line")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); 1 is faster on a busy machine")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp, quick_help):
        sp.add_argument("--quick", action="store_true", help=quick_help)
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")

    def eval_opts(sp):
        g = sp.add_argument_group("evaluation (defaults: " + ", ".join(
            f"{k}={v}" for k, v in DEFAULT_EVAL.items()) + "; smaller with --quick)")
        g.add_argument("--n-batches", type=int)
        g.add_argument("--batch-size", type=int)
        g.add_argument("--pgd-steps", help="comma-separated PGD step counts, e.g. 5,10,20")
        g.add_argument("--pgd-batches", type=int, help="batches attacked with PGD (overrides --pgd-tokens)")
        g.add_argument("--pgd-tokens", type=int, help="tokens attacked with PGD (sources shared across all)")
        g.add_argument("--pgd-restarts", type=int, help="random restarts of each PGD attack (mean and max reported)")
        g.add_argument("--seed", type=int)

    sp = sub.add_parser("train-target", help="train the default target on the default corpus")
    sp.add_argument("--out", required=True, help="run directory")
    sp.add_argument("--config", help="target stage config (default: the packaged target.yaml)")
    sp.add_argument("--steps", type=int, help="override the config's training steps")
    common(sp, "tiny target (quick_target.yaml)")
    sp.set_defaults(fn=_cmd_train_target)

    sp = sub.add_parser("decompose", help="decompose a trained target")
    sp.add_argument("--target", required=True, help="the target directory (RUN/target)")
    sp.add_argument("--out", required=True, help="run directory (writes RUN/decomp)")
    sp.add_argument("--config", help="VPDConfig YAML (default: the packaged vpd.yaml)")
    sp.add_argument("--resume", action="store_true",
                    help="(default) an unfinished run in --out is always continued")
    common(sp, "settings for the tiny target (quick_vpd.yaml)")
    sp.set_defaults(fn=_cmd_decompose)

    sp = sub.add_parser("evaluate", help="evaluate RUN/decomp on the validation split")
    sp.add_argument("--run", required=True, help="run directory")
    sp.add_argument("--target", help="the target directory (default: RUN/target)")
    common(sp, "fewer batches and PGD steps")
    eval_opts(sp)
    sp.set_defaults(fn=_cmd_evaluate)

    sp = sub.add_parser("main", help="the whole pipeline: target -> decompose -> evaluate")
    sp.add_argument("--out", default="runs/main", help="run directory (default: runs/main)")
    sp.add_argument("--target-config", help="target stage config (default: packaged)")
    sp.add_argument("--vpd-config", help="VPDConfig YAML (default: packaged)")
    common(sp, "tiny target and short decomposition: a few minutes")
    eval_opts(sp)
    sp.set_defaults(fn=_cmd_main)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tl-vpd`` console script."""
    args = _parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        args.fn(args)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM during training (TrainingInterrupted)
        print(f"\n{err or 'interrupted'}\nre-run the same command to continue where it stopped",
              file=sys.stderr)
        return 128 + getattr(err, "signum", signal.SIGINT)
    except _USER_ERRORS as err:
        if args.debug:
            raise
        print(f"tl-vpd: error: {err}", file=sys.stderr)
        return 2
    return 0


# Errors that mean "the input was wrong" (a config value, a path, a run directory); anything else
# is a bug and keeps its traceback.
# OSError covers missing, unreadable or existing paths and an unreachable hub; FloatingPointError
# a diverged or NaN training run (lower the lr).
_USER_ERRORS = (RunDirError, ValueError, TypeError, KeyError, OSError, FloatingPointError)


if __name__ == "__main__":
    sys.exit(main())
