"""Sharing decompositions the way sparse autoencoders are shared: a Hugging Face Hub repository.

A shared directory (local, or a Hub repository's snapshot) holds::

    decomposition.json, components.safetensors, ci_fn.safetensors   as Decomposition.save writes
    target.json          how to rebuild the target model (see below)
    README.md            the model card (:mod:`tl_vpd.model_card`)
    eval_report.json     the EvalReport shown in the card, when one was given

``target.json`` records the backend, the target's type, the TransformerLens version, and at most
two ways to rebuild it: ``path``, a local target run directory (:func:`tl_vpd.target.load_target`),
and ``name``, a pretrained model name (a TransformerLens name for a ``HookedTransformer``, the
Hugging Face model id for a ``TransformerBridge``). :func:`from_pretrained` without ``model``
tries them in that order; the rebuilt target is then checked against the saved fingerprints like
any other (:meth:`tl_vpd.Decomposition.load`).

Hub access follows :func:`tl_vpd.data.corpus.load_from_hub`: offline (``HF_HUB_OFFLINE=1``) only
the local cache is read and a miss fails at once naming the repository; online, an unreachable
hub fails at once instead of retrying.
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from tl_vpd import atomic, model_card
from tl_vpd._version import __version__
from tl_vpd.data.corpus import check_hub_reachable, hub_offline, load_from_hub, local_path
from tl_vpd.layout import TARGET_CONFIG_FILE, TARGET_MODEL_FILE
from tl_vpd.report import EvalReport

if TYPE_CHECKING:
    from tl_vpd.decomposition import Decomposition

__all__ = ["CARD_FILE", "REPORT_FILE", "TARGET_FILE", "from_pretrained", "load_as", "push_to_hub",
           "save_pretrained", "target_record"]

TARGET_FILE = "target.json"
CARD_FILE = "README.md"  # the Hub shows a repository's README.md as its model card
REPORT_FILE = "eval_report.json"
TARGET_FORMAT_VERSION = 1
_BRIDGE, _HOOKED = "transformer_bridge", "hooked_transformer"
_UNNAMED = {"", "custom", "native", "external"}  # TransformerLens' names for a model built by hand


# ------------------------------------------------------------------ target.json
def _tl_version() -> str | None:
    try:
        return version("transformer-lens")
    except PackageNotFoundError:
        return None


def _pretrained_name(model: nn.Module) -> str | None:
    """The name the target can be loaded by, or ``None`` for a model built by hand."""
    cfg = getattr(model, "cfg", None)
    hf = getattr(model, "original_model", None)
    if hf is not None:  # a TransformerBridge: the HF model's own record of where it came from
        name = getattr(getattr(hf, "config", None), "_name_or_path", "") or ""
        return None if name in _UNNAMED or Path(name).expanduser().exists() else name
    name = getattr(cfg, "model_name", None)
    if not isinstance(name, str) or name in _UNNAMED:
        return None
    try:  # from_pretrained stores the official name without its organisation
        from transformer_lens.loading_from_pretrained import get_official_model_name
        return get_official_model_name(name)
    except (ImportError, ValueError):
        return None


def target_record(model: nn.Module, backend: str, target_path: str | Path | None = None) -> dict:
    """What ``target.json`` holds for ``model`` (see the module docstring).

    Arguments:
        model: the target.
        backend: the name of its backend (``dec.backend.name``).
        target_path: a target run directory that :func:`tl_vpd.target.load_target` rebuilds the
            target from (recorded as an absolute path).

    Returns:
        The JSON-safe record.

    Raises:
        FileNotFoundError: ``target_path`` is not a complete target run directory.
    """
    path = None
    if target_path is not None:
        p = Path(target_path).expanduser().resolve()
        missing = [f for f in (TARGET_CONFIG_FILE, TARGET_MODEL_FILE) if not (p / f).is_file()]
        if missing:
            raise FileNotFoundError(f"target_path={str(target_path)!r} is not a target run "
                                    f"directory (it lacks {missing}); pass the directory "
                                    "tl_vpd.target.train_target wrote (e.g. RUN/target)")
        path = str(p)
    cfg = getattr(model, "cfg", None)
    return {
        "format_version": TARGET_FORMAT_VERSION,
        "backend": backend,
        "target_type": type(model).__name__,
        "name": _pretrained_name(model),
        "path": path,
        "original_architecture": getattr(cfg, "original_architecture", None),
        "compatibility_mode": (getattr(model, "compatibility_mode", None) if backend == _BRIDGE
                               else None),
        "transformer_lens_version": _tl_version(),
        "tl_vpd_version": __version__,
    }


def _read_record(file: Path) -> dict:
    try:
        rec = json.loads(file.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{file} is not valid JSON ({e}); pass the target as model=") from None
    bad = [k for k in ("name", "path", "backend")
           if not isinstance(rec, dict) or not isinstance(rec.get(k), (str, type(None)))]
    if bad:
        raise ValueError(f"{file} is not a target record (bad or missing {bad}): it was edited; "
                         "pass the target as model=")
    return rec


def _rebuild(rec: dict, file: Path) -> tuple[nn.Module, str]:
    """The target that ``rec`` describes and how it was rebuilt (for error messages)."""
    path, name, backend = rec.get("path"), rec.get("name"), rec.get("backend")
    if path is not None and Path(path).is_dir():
        from tl_vpd.target import load_target  # needs HookedTransformer: not at import (TL 4)
        return load_target(path)[0], f"load_target({path!r})"
    if name is None:
        where = (f"the local target {path}, which does not exist on this machine" if path
                 else f"no way to rebuild the target (a {rec.get('target_type')} that is not a "
                 "pretrained model, saved without target_path=)")
        raise ValueError(f"{file} records {where}; load the target yourself and pass it: "
                         "tl_vpd.from_pretrained(..., model=target)")
    if backend == _HOOKED:
        from tl_vpd.target import load_pretrained
        return load_pretrained(name), f"tl_vpd.target.load_pretrained({name!r})"
    if backend == _BRIDGE:
        from transformer_lens.model_bridge import TransformerBridge
        model = load_from_hub(f"model {name!r}", lambda: TransformerBridge.boot_transformers(name))
        if rec.get("compatibility_mode"):
            model.enable_compatibility_mode(disable_warnings=True)
        return model, f"TransformerBridge.boot_transformers({name!r})"
    raise ValueError(f"{file} records the model name {name!r} for backend {backend!r}, which "
                     "tl_vpd cannot load by name; pass the target as model=")


# ------------------------------------------------------------------ save / load
def save_pretrained(dec: Decomposition, path: str | Path, *, eval_report: EvalReport | None = None,
                    target_path: str | Path | None = None, repo_id: str | None = None) -> Path:
    """Write ``dec`` in the Hugging Face Hub layout (see the module docstring).

    Arguments:
        dec: the decomposition.
        path: the directory (created if needed); its files of these names are overwritten.
        eval_report: an :class:`~tl_vpd.report.EvalReport` of ``dec``, shown in the model card
            and saved as ``eval_report.json``.
        target_path: the target's run directory (e.g. ``RUN/target``), recorded so that
            :func:`from_pretrained` can rebuild the target without ``model=``.
        repo_id: the Hub repository it goes to, named in the card's loading instructions.

    Returns:
        ``path``.

    Raises:
        FileNotFoundError: ``target_path`` is not a target run directory.
        ValueError: ``dec.config`` disagrees with ``dec.spec`` (as :meth:`Decomposition.save`).
    """
    if eval_report is not None and not isinstance(eval_report, EvalReport):
        raise TypeError(f"eval_report must be an EvalReport (dec.evaluate(data) returns one), got "
                        f"{type(eval_report).__name__}")
    record = target_record(dec.model, dec.backend.name, target_path)
    path = Path(path)
    dec.save(path)
    atomic.write_text(path / TARGET_FILE, json.dumps(record, indent=2) + "\n")
    card = model_card.render(dec, record, eval_report, repo_id or str(path))
    atomic.write_text(path / CARD_FILE, card)
    if eval_report is not None:
        eval_report.save_json(path / REPORT_FILE)
    elif (path / REPORT_FILE).exists():  # a stale report of an earlier save would mislead
        (path / REPORT_FILE).unlink()
    return path


def _resolve(name_or_path: str | Path, revision: str | None, cache_dir: str | Path | None) -> Path:
    """The local directory of ``name_or_path``: itself, or the Hub repository's snapshot.

    As in :func:`tl_vpd.data.corpus.local_path`, an existing path, or one whose first folder
    exists, is local (so a mistyped ``runs/dec`` is not looked up on the Hub)."""
    if isinstance(name_or_path, Path):
        local = name_or_path.expanduser()
        if not local.exists():
            raise FileNotFoundError(f"No such file or directory: {str(name_or_path)!r}; pass "
                                    "the directory save_pretrained wrote")
    else:
        local = local_path(name_or_path, by_folder=True)
    if local is not None:
        if not local.is_dir():
            raise FileNotFoundError(f"{str(local)!r} is not a directory; pass the directory "
                                    "save_pretrained wrote, or a Hub repository id ('org/name')")
        return local
    from huggingface_hub import snapshot_download

    # huggingface_hub reads HF_HUB_CACHE once, on import; one set later (a notebook, a test)
    # counts too, as the offline variables do in load_from_hub.
    cache_dir = cache_dir if cache_dir is not None else os.environ.get("HF_HUB_CACHE")
    offline = hub_offline() is not None
    folder = load_from_hub(
        f"decomposition {name_or_path!r}" + (f" (revision {revision!r})" if revision else ""),
        lambda: snapshot_download(name_or_path, revision=revision, cache_dir=cache_dir,
                                  local_files_only=offline, library_name="tl_vpd",
                                  library_version=__version__))
    return Path(folder)


def from_pretrained(name_or_path: str | Path, model: nn.Module | None = None, *,
                    revision: str | None = None, cache_dir: str | Path | None = None
                    ) -> Decomposition:
    """``tl_vpd.from_pretrained``: load a decomposition from a directory or a Hub repository.

    Arguments:
        name_or_path: a directory written by :func:`save_pretrained` (or
            :meth:`~tl_vpd.Decomposition.save`, then ``model`` is needed), or a Hub repository
            id (``"org/name"``), fetched with ``huggingface_hub.snapshot_download``.
        model: the target. Without it the target is rebuilt from ``target.json`` (a recorded
            target run directory, else a recorded pretrained name); it is then ``dec.model``.
        revision: the Hub revision (branch, tag or commit; default ``main``).
        cache_dir: the Hub cache (default: huggingface_hub's, ``HF_HUB_CACHE``).

    Returns:
        The decomposition, checked against its target (:meth:`tl_vpd.Decomposition.load`).

    Raises:
        ConnectionError: the repository is not cached and offline mode is on, or the hub is
            unreachable (the message names the repository); also when rebuilding the target by
            name fails for the same reasons.
        FileNotFoundError: a local path that does not exist, or a directory without the files.
        ValueError: the files are corrupt, ``model`` is not the target, or the target cannot be
            rebuilt (the message says to pass ``model=``).
    """
    from tl_vpd.decomposition import Decomposition  # it imports this module

    return load_as(Decomposition, name_or_path, model, revision=revision, cache_dir=cache_dir)


def load_as(cls: type, name_or_path: str | Path, model: nn.Module | None = None, *,
            revision: str | None = None, cache_dir: str | Path | None = None) -> Decomposition:
    """:func:`from_pretrained` building a ``cls`` (a :class:`~tl_vpd.Decomposition` subclass)."""
    folder = _resolve(name_or_path, revision, cache_dir)
    if model is not None:
        return cls.load(folder, model)
    file = folder / TARGET_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{folder} holds no {TARGET_FILE} (it was saved with "
                                "Decomposition.save, not save_pretrained), so the target cannot "
                                "be rebuilt; pass it: tl_vpd.from_pretrained(..., model=target)")
    target, how = _rebuild(_read_record(file), file)
    try:
        return cls.load(folder, target)
    except ValueError as e:
        raise ValueError(f"{e}\n(The target was rebuilt from {file} with {how}; if the "
                         "decomposed model differs from that, e.g. its weights were processed or "
                         "trained further, pass it as model=.)") from e


def push_to_hub(dec: Decomposition, repo_id: str, *, private: bool = False,
                token: str | None = None, eval_report: EvalReport | None = None,
                target_path: str | Path | None = None,
                commit_message: str = "Upload tl_vpd decomposition") -> str:
    """Upload ``dec`` to the Hub repository ``repo_id`` (created if missing) in the layout of
    :func:`save_pretrained`.

    Arguments:
        dec: the decomposition.
        repo_id: ``"org/name"``.
        private: create the repository private (an existing one keeps its visibility).
        token: a Hub token (default: the logged-in one).
        eval_report: shown in the model card (see :func:`save_pretrained`).
        target_path: the target's run directory, recorded in ``target.json``.
        commit_message: the commit's message.

    Returns:
        The repository's URL.

    Raises:
        ConnectionError: offline mode is on, or the hub is unreachable; raised before anything
            is written or sent.
    """
    var = hub_offline()
    if var is not None:
        raise ConnectionError(f"Cannot push the decomposition to {repo_id!r}: offline mode is on "
                              f"({var}={os.environ[var]}). Unset {var} to upload, or keep it "
                              "local with dec.save_pretrained(folder).")
    check_hub_reachable(f"the Hub repository {repo_id!r} (push)")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="tl_vpd_push_") as tmp:
        save_pretrained(dec, tmp, eval_report=eval_report, target_path=target_path,
                        repo_id=repo_id)
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
    return str(url)
