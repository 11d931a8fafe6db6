"""The stages of the ``tl-vpd`` pipeline: train a target, decompose it, evaluate the
decomposition, each reading and writing a run directory (names: :mod:`tl_vpd.layout`).

A stage whose output is already in the run directory, made with the same config, is loaded
instead of rerun; one made with another config raises :class:`RunDirError`. The command line
(:mod:`tl_vpd.cli`) is a thin layer over these functions.

Stage configs ship with the package (``tl_vpd/configs/*.yaml``, copies in the repository's
``configs/``): ``target.yaml`` has ``corpus`` (arguments of :func:`tl_vpd.data.default_corpus`),
``model`` (:func:`tl_vpd.target.target_config`) and ``train`` (:func:`tl_vpd.target.train_target`)
sections (checked by :func:`read_target_config`); ``vpd.yaml`` is a :class:`tl_vpd.VPDConfig`
file.
"""

from __future__ import annotations

import inspect
from importlib import resources
from pathlib import Path

from torch import nn

from tl_vpd.config import VPDConfig
from tl_vpd.yaml_io import read_yaml, write_yaml
from tl_vpd.data.corpus import LMCorpus, default_corpus
from tl_vpd.decompose import decompose
from tl_vpd.decomposition import Decomposition
from tl_vpd.evaluate import evaluate
from tl_vpd.layout import (
    CHECKPOINT_DIR,
    CORPUS_DIR,
    DECOMP_CONFIG_FILE,
    DECOMP_DIR,
    DECOMPOSITION_DIR,
    EVAL_FILE,
    TARGET_CURVE_FILE,
    TARGET_DIR,
    TARGET_MODEL_FILE,
    TARGET_STAGE_FILE,
)
from tl_vpd.report import EvalReport
from tl_vpd.target import load_target, target_config, train_target

__all__ = [
    "DEFAULT_EVAL",
    "QUICK_EVAL",
    "RunDirError",
    "decompose_stage",
    "evaluate_stage",
    "load_target_stage",
    "packaged_config",
    "read_target_config",
    "stage_config",
    "train_target_stage",
    "unfinished_decomposition",
]

# Evaluation settings: PGD on 8,192 tokens with sources shared across all of them, 3 random
# restarts, step counts up to the VPD paper's 320 (it attacks 65,536 tokens); --quick stops at 20.
# The main job's ladder stops at 40 steps to keep the whole job inside 30 minutes on 2 CPU cores:
# on the default decomposition (C = 192) the ladder 5-40 took 250 s inside the job; by the cost
# per PGD step, 5-80 would add ~4 min and the paper's ladder to 320 with 3 restarts ~45;
# `tl-vpd evaluate --pgd-steps 5,10,20,40,80,160,320` runs it.
DEFAULT_EVAL = dict(n_batches=8, batch_size=16, pgd_steps=(5, 10, 20, 40),
                    pgd_tokens=8192, pgd_restarts=3)
QUICK_EVAL = dict(n_batches=4, batch_size=16, pgd_steps=(5, 10, 20), pgd_tokens=8192,
                  pgd_restarts=3)

# The target-stage config schema: each section holds keyword arguments of one function, less the
# ones the pipeline supplies itself.
_TARGET_SCHEMA = {
    "corpus": (default_corpus, {"cache_dir"}),
    "model": (target_config, {"d_vocab", "n_ctx"}),  # from the corpus
    "train": (train_target, {"cfg", "train_tokens", "val_tokens", "run_dir", "tokenizer",
                             "progress"}),
}


class RunDirError(Exception):
    """A run directory is missing a stage's output or holds one made with another config."""


# ------------------------------------------------------------------------------ configs
def packaged_config(name: str) -> Path:
    """Path of a config shipped inside the package, e.g. ``packaged_config("vpd.yaml")``."""
    path = resources.files("tl_vpd") / "configs" / name
    if not path.is_file():
        raise FileNotFoundError(f"tl_vpd ships no config {name!r}")
    return Path(str(path))


def stage_config(given: str | Path | None, quick: bool, name: str) -> Path:
    """``given``, else the packaged config ``name`` (its ``quick_`` variant when ``quick``)."""
    if given is not None:
        return Path(given)
    return packaged_config(f"quick_{name}" if quick else name)


def read_target_config(path: str | Path) -> dict:
    """Read and check a target stage config: ``{"corpus": {...}, "model": {...}, "train": {...}}``.

    Raises:
        ValueError: unknown sections or keys, naming them and the allowed ones.
    """
    cfg = read_yaml(path) or {}
    allowed = {section: set(inspect.signature(fn).parameters) - supplied
               for section, (fn, supplied) in _TARGET_SCHEMA.items()}
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


# ------------------------------------------------------------------------------ stages
def train_target_stage(out: Path, config: Path, steps: int | None = None, progress: bool = True
                       ) -> tuple[nn.Module, LMCorpus, list[dict], bool]:
    """Train the target on the default corpus into ``out/target``.

    A target already in ``out/target`` with the same stage config is loaded instead; an
    unfinished one (interrupted, killed) is continued from its newest checkpoint; one with a
    different config raises :class:`RunDirError`.

    Arguments:
        out: the run directory.
        config: the target stage config (see :func:`read_target_config`).
        steps: overrides the config's training steps.
        progress: show progress bars.

    Returns:
        ``(model, corpus, curve, trained)``; ``trained`` is false when an existing target was
        loaded.
    """
    cfg = read_target_config(config)
    if steps is not None:
        cfg["train"]["steps"] = steps
    target_dir = out / TARGET_DIR
    corpus = default_corpus(**cfg["corpus"], cache_dir=out / CORPUS_DIR, progress=progress)
    if (target_dir / TARGET_MODEL_FILE).is_file():
        saved = read_yaml(target_dir / TARGET_STAGE_FILE)
        if saved != cfg:
            raise RunDirError(f"{target_dir} holds a target trained with another config "
                              f"({saved}); use another --out, or delete it to retrain")
        model, _, curve = load_target(target_dir)
        return model, corpus, curve, False
    unfinished = (target_dir / TARGET_STAGE_FILE).is_file() or (target_dir / TARGET_CURVE_FILE).is_file()
    if unfinished:  # interrupted or killed: continue it (train_target checks it is the same run)
        saved = read_yaml(target_dir / TARGET_STAGE_FILE) if (target_dir / TARGET_STAGE_FILE).is_file() else None
        if saved != cfg:
            raise RunDirError(f"{target_dir} holds an unfinished target trained with another "
                              f"config ({saved}); use another --out, or delete it")
    model_cfg = target_config(corpus.vocab_size, n_ctx=corpus.seq_len, **cfg["model"])
    target_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(cfg, target_dir / TARGET_STAGE_FILE)
    run = train_target(model_cfg, corpus.train, corpus.val, **cfg["train"], run_dir=target_dir,
                       tokenizer=corpus.tokenizer, progress=progress, resume=unfinished)
    return run.model, corpus, run.curve, True


def load_target_stage(target_dir: Path) -> tuple[nn.Module, LMCorpus, list[dict]]:
    """``(model, corpus, curve)`` of a target trained by :func:`train_target_stage`.

    The corpus is rebuilt from the saved stage config (cached next to the target) and checked
    against the target's tokenizer.
    """
    model, tokenizer, curve = load_target(target_dir)
    stage = target_dir / TARGET_STAGE_FILE
    if not stage.is_file():
        raise RunDirError(f"{target_dir} has no {TARGET_STAGE_FILE}: train it with "
                          "`tl-vpd train-target`, which records the corpus it used")
    cfg = read_yaml(stage)
    corpus = default_corpus(**cfg["corpus"], cache_dir=target_dir.parent / CORPUS_DIR)
    if tokenizer is not None and tokenizer.to_str() != corpus.tokenizer.to_str():
        raise ValueError(f"the corpus rebuilt from {stage} has another tokenizer than the target "
                         f"in {target_dir} (was it built with another Python version?)")
    return model, corpus, curve


def decompose_stage(model: nn.Module, corpus: LMCorpus, out: Path, config: Path,
                    resume: bool = False, progress: bool = True) -> tuple[Decomposition, bool]:
    """Decompose ``model`` on ``corpus.train`` into ``out/decomp``.

    A finished decomposition with the same config is loaded instead; an unfinished one is
    continued from its newest valid checkpoint.

    Arguments:
        model: the target.
        corpus: its corpus (``train`` to decompose on, ``val`` for the training loop's evals).
        out: the run directory.
        config: a :class:`~tl_vpd.VPDConfig` file.
        resume: accepted for compatibility; an unfinished run is always continued.
        progress: show a progress bar.

    Returns:
        ``(decomposition, trained)``; ``trained`` is false when a finished one was loaded.
    """
    cfg = VPDConfig.from_file(config)
    if not progress:
        cfg = cfg.replace(progress=False)
    run_dir = out / DECOMP_DIR
    saved_cfg = run_dir / DECOMP_CONFIG_FILE
    if saved_cfg.is_file():
        saved = VPDConfig.from_file(saved_cfg)
        if saved.replace(progress=cfg.progress) != cfg:
            raise RunDirError(f"{run_dir} holds a decomposition run with another config "
                              f"({saved_cfg}); use another --out, or delete it to start over")
        if (run_dir / DECOMPOSITION_DIR).is_dir():
            return Decomposition.load(run_dir / DECOMPOSITION_DIR, model), False
    # An unfinished run of this config is continued (tl_vpd.run_dir checks it is the same run).
    return decompose(model, cfg, corpus.train, eval_data=corpus.val, run_dir=run_dir,
                     resume=True), True


def unfinished_decomposition(out: Path) -> bool:
    """Whether ``out/decomp`` holds checkpoints but no final decomposition."""
    run_dir = out / DECOMP_DIR
    return (run_dir / CHECKPOINT_DIR).is_dir() and not (run_dir / DECOMPOSITION_DIR).is_dir()


def evaluate_stage(model: nn.Module, corpus: LMCorpus, curve: list[dict], out: Path,
                   progress: bool = True, **eval_kw) -> EvalReport:
    """Evaluate ``out/decomp/decomposition`` on ``corpus.val``; writes ``out/eval.json``.

    Arguments:
        model, corpus, curve: from :func:`train_target_stage` or :func:`load_target_stage`.
        out: the run directory.
        progress: show a progress bar.
        **eval_kw: keyword arguments of :func:`tl_vpd.evaluate.evaluate` (e.g. ``DEFAULT_EVAL``).

    Returns:
        The :class:`~tl_vpd.report.EvalReport` (also saved).
    """
    path = out / DECOMP_DIR / DECOMPOSITION_DIR
    if not path.is_dir():
        raise RunDirError(f"no decomposition at {path}; run `tl-vpd decompose` first")
    dec = Decomposition.load(path, model)
    report = evaluate(dec, corpus.val, target_curve=curve, progress=progress, **eval_kw)
    report.save_json(out / EVAL_FILE)
    return report
