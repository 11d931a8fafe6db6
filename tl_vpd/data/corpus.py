"""Corpora that need no download (the installed standard library's source, local text files)
and, as an optional extra, Hugging Face datasets; :func:`default_corpus` tokenizes one into an
:class:`LMCorpus`.

The default corpus is the source of the installed Python standard library, so every machine that
runs this library can build it offline. Loading by name from the Hugging Face hub
(:func:`load_from_hub`, also used for pretrained models) follows three rules: a name that is a
local path is read locally, and one that only looks like a path but does not exist raises
``FileNotFoundError``; in offline mode (``HF_HUB_OFFLINE`` and kin) only the local cache is read,
and a miss fails at once; otherwise an unreachable hub fails at once instead of retrying.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from tl_vpd._typing import Int
from tl_vpd.data.blocks import tokenize_blocks
from tl_vpd.data.tokenizer import TOKENIZER_FILE, load_tokenizer, save_tokenizer, train_tokenizer

__all__ = [
    "TOKENS_FILE",
    "LMCorpus",
    "check_hub_reachable",
    "default_corpus",
    "hub_offline",
    "load_from_hub",
    "load_hf_dataset_texts",
    "local_path",
    "read_text_files",
    "stdlib_corpus",
]

TOKENS_FILE = "tokens.safetensors"  # the token blocks of a cached corpus

# Directories of the standard library that are not ordinary library source: installed packages,
# the regression test suites (huge, repetitive), and the IDLE / 2to3 tools.
_STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
)
_OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_HUB_HOST = ("huggingface.co", 443)
# Hub names never end like files, so a name ending like this is a local path.
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv",
                  ".parquet": "parquet", ".arrow": "arrow", ".txt": "text"}
_FILE_SUFFIXES = set(_FILE_BUILDERS) | {".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".gguf"}
_LOCAL_HINT = ("Use local data instead: tl_vpd.data.read_text_files(folder) or "
               "tl_vpd.data.default_corpus() for text, tl_vpd.target.load_target(run_dir) for models.")


def _stable_unit(key: str) -> float:
    """A number in [0, 1) from ``key`` that is the same in every process (unlike ``hash``)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stdlib_corpus(max_bytes: int = 16_000_000, val_fraction: float = 0.05) -> tuple[list[str], list[str]]:
    """The installed Python standard library's ``.py`` files as a train / validation corpus.

    Files are visited in an order fixed by a hash of their relative path, so truncating at
    ``max_bytes`` takes a spread of modules rather than the alphabetically first ones. Whole files
    are held out for validation, chosen by a second hash of their path.

    Arguments:
        max_bytes: Stop adding files once this many UTF-8 bytes (train and val together) are read.
            The default takes all of it (about 11 MB on CPython 3.11).
        val_fraction: Fraction of the bytes held out for validation (at least one file).

    Returns:
        ``(train_texts, val_texts)``, one string per file. Identical across calls on one Python
        installation; other Python versions ship slightly different source.
    """
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}.")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    root = Path(sysconfig.get_paths()["stdlib"])
    rel_paths = [
        path.relative_to(root).as_posix()
        for path in root.rglob("*.py")
        if not _STDLIB_SKIP_DIRS.intersection(path.relative_to(root).parts[:-1])
    ]
    if not rel_paths:
        raise FileNotFoundError(f"No .py files found in the standard library directory {root}.")
    rel_paths.sort(key=lambda rel: _stable_unit("order:" + rel))  # also makes rglob's order irrelevant

    files: dict[str, str] = {}
    n_bytes = 0
    for rel in rel_paths:
        try:
            raw = (root / rel).read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if not text.strip():
            continue
        files[rel] = text
        n_bytes += len(raw)
        if n_bytes >= max_bytes:
            break
    if len(files) < 2:
        raise ValueError(f"stdlib_corpus(max_bytes={max_bytes}) read {len(files)} file(s); raise max_bytes.")

    # Whole files go to validation in a second hash order until they hold val_fraction of the
    # bytes; by bytes rather than file count because file sizes span three orders of magnitude.
    val_rels: set[str] = set()
    val_bytes = 0
    for rel in sorted(files, key=lambda rel: _stable_unit("split:" + rel)):
        if val_rels and (val_bytes >= val_fraction * n_bytes or len(val_rels) == len(files) - 1):
            break
        val_rels.add(rel)
        val_bytes += len(files[rel].encode("utf-8"))
    train = [text for rel, text in files.items() if rel not in val_rels]
    val = [text for rel, text in files.items() if rel in val_rels]
    return train, val


def read_text_files(
    paths: str | Path | Sequence[str | Path], suffixes: Sequence[str] = (".txt", ".md", ".py")
) -> list[str]:
    """Read local text files, searching folders recursively.

    Arguments:
        paths: A file, a folder, or a sequence of them. Files given directly are read whatever their
            suffix; folders contribute files whose suffix is in ``suffixes``.
        suffixes: File suffixes to collect from folders.

    Returns:
        One string per file, folders in sorted path order. Files that are not UTF-8 are skipped.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    wanted = {s.lower() for s in suffixes}
    files: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            files.extend(sorted(p for p in entry.rglob("*") if p.is_file() and p.suffix.lower() in wanted))
        elif entry.is_file():
            files.append(entry)
        else:
            raise FileNotFoundError(f"{entry} is neither a file nor a folder.")
    texts = []
    for file in files:
        try:
            texts.append(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue
    if not texts:
        raise FileNotFoundError(
            f"No UTF-8 text files with suffixes {sorted(wanted)} found in {[str(p) for p in paths]}."
        )
    return texts


def hub_offline() -> str | None:
    """The environment variable that turns on the Hugging Face offline mode (``HF_HUB_OFFLINE``,
    ``HF_DATASETS_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set to 1 / true / yes / on), or ``None``."""
    for var in _OFFLINE_ENV_VARS:
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return var
    return None


def local_path(name: str, *, by_folder: bool = True) -> Path | None:
    """The local file or folder that ``name`` names, or ``None`` for a hub name.

    Arguments:
        name: A hub name (``"org/name"``) or a local path.
        by_folder: Also count as local a name that exists as given, or whose first folder exists
            (a local ``data/corpus`` shadows a hub name, as in ``datasets``); off for model names.

    Returns:
        The existing path, or ``None`` when ``name`` is not a local path.

    Raises:
        FileNotFoundError: ``name`` looks like a local path (starts with ``./``, ``../``, ``/`` or
            ``~``, ends like a data or weights file, or by ``by_folder``) but does not exist.
    """
    path = Path(name).expanduser()
    parts = name.replace(os.sep, "/").split("/")
    looks_local = (name.startswith(("~", "./", "../", "." + os.sep, ".." + os.sep))
                   or os.path.isabs(name) or path.suffix.lower() in _FILE_SUFFIXES
                   or (by_folder and len(parts) > 1 and Path(parts[0]).expanduser().is_dir()))
    if path.exists() and (looks_local or by_folder):
        return path
    if looks_local:
        raise FileNotFoundError(f"No such file or directory: {name!r} (resolved to "
                                f"{path.absolute()}); it names a local path, not a hub name, so the hub was not asked.")
    return None


def check_hub_reachable(what: str, timeout: float = 3.0) -> None:
    """Raise ``ConnectionError`` at once if the Hugging Face hub cannot be reached.

    Downloads from an unreachable hub can retry for minutes; this probe turns that into an
    immediate error. In offline mode (:func:`hub_offline`) nothing will be downloaded, so it
    returns without probing.

    Arguments:
        what: What was being loaded, e.g. ``"dataset 'roneneldan/TinyStories'"``; named in the error.
        timeout: Seconds to wait for a TCP connection to huggingface.co.
    """
    if hub_offline() is not None:
        return
    try:
        socket.create_connection(_HUB_HOST, timeout=timeout).close()
    except OSError as err:
        raise ConnectionError(f"Cannot load {what}: the Hugging Face hub (huggingface.co:443) is "
                              f"unreachable ({err}). {_LOCAL_HINT}") from err


@contextmanager
def _libraries_offline() -> Iterator[None]:
    """Hold ``huggingface_hub`` and ``datasets`` in offline mode. They read the variables once, on
    import, so one set later (a notebook, a test) would be ignored and the load would go online."""
    # A module not imported yet reads the variables when it is.
    mods = [sys.modules.get("huggingface_hub.constants"), sys.modules.get("datasets.config")]
    saved = [(m, f, getattr(m, f)) for m in mods if m is not None
             for f in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if hasattr(m, f)]
    for mod, flag, _ in saved:
        setattr(mod, flag, True)
    try:
        yield
    finally:
        for mod, flag, value in reversed(saved):
            setattr(mod, flag, value)


def load_from_hub(what: str, load: Callable[[], object], timeout: float = 3.0):
    """``load()`` (a load by hub name) failing fast instead of hanging.

    Online, the hub is probed first (:func:`check_hub_reachable`). In offline mode there is no
    probe: ``load()`` runs with the libraries held offline, so it reads the local cache, and an
    ``OSError`` (nothing cached) becomes a ``ConnectionError`` naming ``what``.

    Arguments:
        what: What is loaded, e.g. ``"model 'gpt2'"``; named in errors.
        load: Does the load, e.g. ``lambda: datasets.load_dataset(name)``.
        timeout: Seconds the probe waits for huggingface.co.

    Returns:
        What ``load()`` returns.
    """
    var = hub_offline()
    if var is None:
        check_hub_reachable(what, timeout)
        return load()
    with _libraries_offline():
        try:
            return load()
        except OSError as err:  # ConnectionError, FileNotFoundError: not (fully) in the cache
            detail = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise ConnectionError(
                f"Cannot load {what}: it is not in the local Hugging Face cache and offline mode "
                f"is on ({var}={os.environ[var]}). Unset {var} to download it, or load something "
                f"cached. {_LOCAL_HINT} ({detail})") from err


def _load_local_dataset(datasets, path: Path, config: str | None, split: str, streaming: bool):
    """A dataset from a local folder (``save_to_disk`` output or data files) or a data file."""
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise KeyError(f"{path} has splits {sorted(dataset)}, not {split!r}.")
            dataset = dataset[split]
        return dataset.to_iterable_dataset() if streaming else dataset
    if path.is_dir():
        return datasets.load_dataset(str(path), config, split=split, streaming=streaming)
    builder = _FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"{path} is not a dataset file this loader knows; use one ending in "
                         f"{sorted(_FILE_BUILDERS)}, or a folder.")
    return datasets.load_dataset(builder, data_files={split: str(path)}, split=split,
                                 streaming=streaming)


def load_hf_dataset_texts(
    name: str,
    split: str = "train",
    text_column: str = "text",
    max_docs: int | None = None,
    config: str | None = None,
) -> list[str]:
    """Texts of a Hugging Face dataset (needs the optional ``datasets`` package).

    Arguments:
        name: Hub dataset name, e.g. ``"roneneldan/TinyStories"``, or a local path: a dataset
            folder (``save_to_disk`` output or data files) or one data file (``.jsonl``, ``.csv``,
            ``.parquet``, ``.txt``, ...). The hub rules are those of :func:`load_from_hub`.
        split: Dataset split.
        text_column: Column holding the text.
        max_docs: Stream and keep only this many documents instead of downloading the whole split.
        config: Dataset configuration, for datasets that have several (e.g. ``"wikitext-2-raw-v1"``).

    Returns:
        One string per document.
    """
    try:
        import datasets
    except ImportError as err:
        raise ImportError("load_hf_dataset_texts needs the `datasets` package: pip install datasets") from err
    streaming, path = max_docs is not None, local_path(name)

    def read() -> list[str]:
        if path is not None:
            dataset = _load_local_dataset(datasets, path, config, split, streaming)
        else:
            dataset = datasets.load_dataset(name, config, split=split, streaming=streaming)
        texts = []
        for row in dataset.take(max_docs) if streaming else dataset:
            if text_column not in row:
                raise KeyError(f"Dataset {name!r} has no column {text_column!r}; its columns are "
                               f"{sorted(row)}.")
            texts.append(row[text_column])
        return texts

    if path is not None:  # local data: no hub, not even the libraries' download counters
        with _libraries_offline():
            return read()
    return load_from_hub(f"dataset {name!r}" + (f" (config {config!r})" if config else ""), read)


@dataclass
class LMCorpus:
    """Tokenized train / validation blocks and the tokenizer that made them."""

    train: Int[torch.Tensor, "n_train seq"]
    val: Int[torch.Tensor, "n_val seq"]
    tokenizer: Tokenizer

    @property
    def seq_len(self) -> int:
        return self.train.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __repr__(self) -> str:
        return (
            f"LMCorpus(train={self.train.shape[0]:,} blocks ({self.train.numel():,} tokens), "
            f"val={self.val.shape[0]:,} blocks ({self.val.numel():,} tokens), "
            f"seq_len={self.seq_len}, vocab_size={self.vocab_size})"
        )


def default_corpus(
    seq_len: int = 128,
    vocab_size: int = 4096,
    max_bytes: int = 16_000_000,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> LMCorpus:
    """The standard-library corpus, tokenized with a BPE tokenizer trained on its train split.

    Arguments:
        seq_len: Tokens per block.
        vocab_size: Tokenizer vocabulary size.
        max_bytes: Bytes of source to read (see :func:`stdlib_corpus`).
        cache_dir: If given, the tokenizer and token blocks are cached in a subfolder named after
            the arguments and the Python version, so a second call only loads them.
        progress: Show the tokenizing progress bar.

    Returns:
        The :class:`LMCorpus`.
    """
    cache = None
    if cache_dir is not None:
        version = "{}.{}.{}".format(*sys.version_info[:3])
        cache = Path(cache_dir) / f"stdlib-py{version}-bytes{max_bytes}-vocab{vocab_size}-seq{seq_len}"
        if (cache / TOKENIZER_FILE).is_file() and (cache / TOKENS_FILE).is_file():
            tokens = load_file(str(cache / TOKENS_FILE))
            return LMCorpus(tokens["train"], tokens["val"], load_tokenizer(cache / TOKENIZER_FILE))

    train_texts, val_texts = stdlib_corpus(max_bytes=max_bytes)
    tokenizer = train_tokenizer(train_texts, vocab_size=vocab_size)
    corpus = LMCorpus(
        train=tokenize_blocks(train_texts, tokenizer, seq_len, progress=progress),
        val=tokenize_blocks(val_texts, tokenizer, seq_len, progress=progress),
        tokenizer=tokenizer,
    )
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        save_file({"train": corpus.train, "val": corpus.val}, str(cache / TOKENS_FILE))
        # Tokenizer last: its presence marks a complete cache entry.
        save_tokenizer(tokenizer, cache / TOKENIZER_FILE)
    return corpus
