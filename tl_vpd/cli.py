"""The ``tl-vpd`` command line: train a target, decompose it, evaluate the decomposition.

::

    tl-vpd train-target --out RUN [--config target.yaml] [--steps N] [--quick]
    tl-vpd decompose --target RUN/target --out RUN [--config vpd.yaml] [--resume]
    tl-vpd evaluate --run RUN
    tl-vpd main [--out runs/main] [--quick]

Layout of a run directory::

    RUN/corpus/               the tokenized default corpus (a cache)
    RUN/target/               the target (tl_vpd.target's layout) + target.yaml, the stage config
    RUN/decomp/               checkpoints/, config.yaml and the final decomposition/
    RUN/eval.json             the EvalReport

Stage configs ship with the package (``tl_vpd/configs/*.yaml``, copies in the repository's
``configs/``): ``target.yaml`` has ``corpus`` (arguments of :func:`tl_vpd.data.default_corpus`),
``model`` (:func:`tl_vpd.target.target_config`) and ``train`` (:func:`tl_vpd.target.train_target`)
sections; ``vpd.yaml`` is a :class:`tl_vpd.VPDConfig` file.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from importlib import resources
from pathlib import Path

import yaml

__all__ = ["RunDirError", "main", "packaged_config", "read_target_config"]

CORPUS_DIR, TARGET_DIR, DECOMP_DIR = "corpus", "target", "decomp"
DECOMPOSITION_DIR = "decomposition"  # inside DECOMP_DIR, written by tl_vpd.decompose
TARGET_STAGE_FILE = "target.yaml"  # the target stage's config, saved next to the target
EVAL_FILE = "eval.json"
DEFAULT_EVAL = dict(n_batches=8, batch_size=16, pgd_steps=(5, 10, 20, 40, 80), pgd_batches=1)
QUICK_EVAL = dict(n_batches=4, batch_size=16, pgd_steps=(5, 10, 20, 40), pgd_batches=1)


class RunDirError(Exception):
    """A run directory is missing a stage's output or holds one made with another config."""


# ------------------------------------------------------------------------------ configs
def packaged_config(name: str) -> Path:
    """Path of a config shipped inside the package, e.g. ``packaged_config("vpd.yaml")``."""
    path = resources.files("tl_vpd") / "configs" / name
    if not path.is_file():
        raise FileNotFoundError(f"tl_vpd ships no config {name!r}")
    return Path(str(path))


def read_target_config(path: str | Path) -> dict:
    """Read and check a target stage config: ``{"corpus": {...}, "model": {...}, "train": {...}}``.

    Unknown sections or keys raise ``ValueError`` naming them and the allowed ones.
    """
    from tl_vpd.data import default_corpus
    from tl_vpd.target import target_config, train_target

    cfg = _read_yaml(path) or {}
    allowed = {
        "corpus": _params(default_corpus, exclude={"cache_dir"}),
        "model": _params(target_config, exclude={"d_vocab", "n_ctx"}),  # from the corpus
        "train": _params(train_target, exclude={"cfg", "train_tokens", "val_tokens", "run_dir",
                                                "tokenizer", "progress"}),
    }
    if not isinstance(cfg, dict) or set(cfg) - set(allowed):
        raise ValueError(f"{path}: a target config has the sections {sorted(allowed)}; "
                         f"got {sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__}")
    out = {}
    for section, keys in allowed.items():
        values = cfg.get(section) or {}
        unknown = sorted(set(values) - keys)
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {unknown} in section {section!r}; "
                             f"allowed: {sorted(keys)}")
        out[section] = dict(values)
    return out


def _params(fn, exclude: set[str]) -> set[str]:
    return set(inspect.signature(fn).parameters) - exclude


def _stage_config(given: str | None, quick: bool, name: str) -> Path:
    if given is not None:
        return Path(given)
    return packaged_config(f"quick_{name}" if quick else name)


# ------------------------------------------------------------------------------ stages
def train_target_stage(out: Path, config: Path, steps: int | None = None, progress: bool = True):
    """Train the target on the default corpus; returns ``(model, corpus, curve)``.

    A target already in ``out/target`` with the same stage config is loaded instead; one with a
    different config raises.
    """
    from tl_vpd.data import default_corpus
    from tl_vpd.target import MODEL_FILE, load_target, target_config, train_target

    cfg = read_target_config(config)
    if steps is not None:
        cfg["train"]["steps"] = steps
    target_dir = out / TARGET_DIR
    corpus = default_corpus(**cfg["corpus"], cache_dir=out / CORPUS_DIR)
    if (target_dir / MODEL_FILE).is_file():
        saved = _read_yaml(target_dir / TARGET_STAGE_FILE)
        if saved != cfg:
            raise RunDirError(f"{target_dir} holds a target trained with another config "
                             f"({saved}); use another --out, or delete it to retrain")
        model, _, curve = load_target(target_dir)
        return model, corpus, curve, False
    model_cfg = target_config(corpus.vocab_size, n_ctx=corpus.seq_len, **cfg["model"])
    target_dir.mkdir(parents=True, exist_ok=True)
    _write_yaml(cfg, target_dir / TARGET_STAGE_FILE)
    run = train_target(model_cfg, corpus.train, corpus.val, **cfg["train"], run_dir=target_dir,
                       tokenizer=corpus.tokenizer, progress=progress)
    return run.model, corpus, run.curve, True


def load_target_stage(target_dir: Path):
    """``(model, corpus, curve)`` of a target trained by :func:`train_target_stage`.

    The corpus is rebuilt from the saved stage config (cached next to the target) and checked
    against the target's tokenizer.
    """
    from tl_vpd.data import default_corpus
    from tl_vpd.target import load_target

    model, tokenizer, curve = load_target(target_dir)
    stage = target_dir / TARGET_STAGE_FILE
    if not stage.is_file():
        raise RunDirError(f"{target_dir} has no {TARGET_STAGE_FILE}: train it with "
                                "`tl-vpd train-target`, which records the corpus it used")
    cfg = _read_yaml(stage)
    corpus = default_corpus(**cfg["corpus"], cache_dir=target_dir.parent / CORPUS_DIR)
    if tokenizer is not None and tokenizer.to_str() != corpus.tokenizer.to_str():
        raise ValueError(f"the corpus rebuilt from {stage} has another tokenizer than the target "
                         f"in {target_dir} (was it built with another Python version?)")
    return model, corpus, curve


def decompose_stage(model, corpus, out: Path, config: Path, resume: bool = False,
                    progress: bool = True):
    """Decompose ``model`` on ``corpus.train`` into ``out/decomp``; returns the Decomposition.

    A finished decomposition with the same config is loaded instead. Checkpoints of an
    unfinished run are resumed when ``resume`` is true, and raise otherwise.
    """
    import tl_vpd

    cfg = tl_vpd.VPDConfig.from_file(config)
    if not progress:
        cfg = cfg.replace(progress=False)
    run_dir = out / DECOMP_DIR
    saved_cfg = run_dir / "config.yaml"
    if saved_cfg.is_file():
        saved = tl_vpd.VPDConfig.from_file(saved_cfg)
        if saved.replace(progress=cfg.progress) != cfg:
            raise RunDirError(f"{run_dir} holds a decomposition run with another config "
                             f"({saved_cfg}); use another --out, or delete it to start over")
        if (run_dir / DECOMPOSITION_DIR).is_dir() and not resume:
            dec = tl_vpd.load(run_dir / DECOMPOSITION_DIR, model)
            dec.config = cfg
            return dec, False
        if not resume:
            raise RunDirError(f"{run_dir} holds checkpoints of an unfinished run; "
                                  "pass --resume to continue it")
    return tl_vpd.decompose(model, cfg, corpus.train, eval_data=corpus.val, run_dir=run_dir,
                            resume=resume and (run_dir / "checkpoints").is_dir()), True


def evaluate_stage(model, corpus, curve, out: Path, progress: bool = True, **eval_kw):
    """Evaluate ``out/decomp/decomposition`` on ``corpus.val``; writes ``out/eval.json``."""
    import tl_vpd
    from tl_vpd.evaluate import evaluate

    path = out / DECOMP_DIR / DECOMPOSITION_DIR
    if not path.is_dir():
        raise RunDirError(f"no decomposition at {path}; run `tl-vpd decompose` first")
    dec = tl_vpd.load(path, model)
    if (out / DECOMP_DIR / "config.yaml").is_file():
        dec.config = tl_vpd.VPDConfig.from_file(out / DECOMP_DIR / "config.yaml")
    report = evaluate(dec, corpus.val, target_curve=curve, progress=progress, **eval_kw)
    report.save_json(out / EVAL_FILE)
    return report


# ------------------------------------------------------------------------------ commands
def _cmd_train_target(args) -> None:
    out = Path(args.out)
    t = time.perf_counter()
    config = _stage_config(args.config, args.quick, "target.yaml")
    _, _, curve, trained = train_target_stage(out, config, args.steps, not args.no_progress)
    verb = "trained" if trained else "found (already trained)"
    print(f"target {verb} in {out / TARGET_DIR} ({time.perf_counter() - t:.1f} s); "
          f"val CE {curve[0]['val_ce']:.3f} -> {curve[-1]['val_ce']:.3f}")


def _cmd_decompose(args) -> None:
    out = Path(args.out)
    model, corpus, _ = load_target_stage(Path(args.target))
    t = time.perf_counter()
    dec, _ = decompose_stage(model, corpus, out, _stage_config(args.config, args.quick, "vpd.yaml"),
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
        out, _stage_config(args.target_config, args.quick, "target.yaml"), None, progress))
    print(f"target {'trained' if trained else 'found'} in {out / TARGET_DIR}: "
          f"val CE {curve[0]['val_ce']:.3f} -> {curve[-1]['val_ce']:.3f}; {corpus}")
    dec, fresh = stage("decompose", lambda: decompose_stage(
        model, corpus, out, _stage_config(args.vpd_config, args.quick, "vpd.yaml"),
        resume=(out / DECOMP_DIR / "checkpoints").is_dir()
        and not (out / DECOMP_DIR / DECOMPOSITION_DIR).is_dir(), progress=progress))
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
    for key in ("n_batches", "batch_size", "pgd_batches", "seed"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    if args.pgd_steps is not None:
        kw["pgd_steps"] = tuple(int(n) for n in args.pgd_steps.split(","))
    return kw


# ------------------------------------------------------------------------------ parsing
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tl-vpd", description="adVersarial Parameter Decomposition "
                                "of TransformerLens models: train a target, decompose, evaluate.")
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
        g.add_argument("--pgd-batches", type=int, help="batches attacked with PGD")
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
    sp.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
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
        import torch

        torch.set_num_threads(args.threads)
    try:
        args.fn(args)
    except KeyboardInterrupt:
        print("\ninterrupted; re-run the same command to continue from the last checkpoint",
              file=sys.stderr)
        return 130
    except RunDirError as err:
        print(f"tl-vpd: error: {err}", file=sys.stderr)
        return 2
    return 0


def _read_yaml(path: Path):
    from tl_vpd.config import _YAMLLoader  # reads 1e-3 as a float, as VPDConfig files do

    return yaml.load(Path(path).read_text(), Loader=_YAMLLoader)


def _write_yaml(obj, path: Path) -> None:
    Path(path).write_text(yaml.safe_dump(obj, sort_keys=False))


if __name__ == "__main__":
    sys.exit(main())
