"""tl_vpd.data.corpus: the standard-library corpus, local files, the Hugging Face guard and the
cached default corpus (offline mode and local paths in detail: test_hub_offline.py)."""

import socket
import time

import pytest
import torch

from tl_vpd.data.blocks import tokenize_blocks
from tl_vpd.data.corpus import (
    LMCorpus,
    default_corpus,
    load_hf_dataset_texts,
    read_text_files,
    stdlib_corpus,
)

SMALL_BYTES = 300_000
SMALL_VOCAB = 512


@pytest.fixture(scope="module")
def small_split():
    return stdlib_corpus(max_bytes=SMALL_BYTES)


def test_stdlib_corpus_is_deterministic_and_split(small_split):
    train, val = small_split
    assert stdlib_corpus(max_bytes=SMALL_BYTES) == (train, val)
    assert train and val
    assert not set(train) & set(val)
    n_bytes = sum(len(t.encode()) for t in train + val)
    # Stops after the file that crosses the budget, so it may overshoot by at most one file.
    assert SMALL_BYTES <= n_bytes < SMALL_BYTES + max(len(t.encode()) for t in train + val)


def test_stdlib_corpus_grows_with_budget(small_split):
    train, val = stdlib_corpus(max_bytes=2 * SMALL_BYTES, val_fraction=0.2)
    # Truncation follows a fixed file order, so the bigger corpus extends the smaller one.
    assert set(small_split[0] + small_split[1]) < set(train + val)
    val_bytes = sum(len(t.encode()) for t in val)
    assert train and val_bytes >= 0.2 * sum(len(t.encode()) for t in train + val)


def test_tokenizing_progress_bar_can_be_turned_off(small_split, capsys):
    """`tl-vpd train-target --no-progress` reaches the tokenizer's bar (more than one chunk of
    documents shows it; progress=False hides it)."""
    from tl_vpd.data.tokenizer import train_tokenizer

    lines = [line for text in small_split[0] for line in text.splitlines() if line.strip()][:600]
    tokenizer = train_tokenizer(lines, vocab_size=300)
    capsys.readouterr()
    quiet = tokenize_blocks(lines, tokenizer, seq_len=16, progress=False)
    assert "tokenizing" not in capsys.readouterr().err
    shown = tokenize_blocks(lines, tokenizer, seq_len=16)
    assert "tokenizing" in capsys.readouterr().err
    assert torch.equal(quiet, shown)


def test_default_corpus_is_deterministic_and_cached(tmp_path):
    kwargs = dict(seq_len=32, vocab_size=SMALL_VOCAB, max_bytes=SMALL_BYTES)
    first = default_corpus(**kwargs, cache_dir=tmp_path)
    assert isinstance(first, LMCorpus)
    assert first.train.shape[1] == first.val.shape[1] == 32
    assert int(first.train.max()) < SMALL_VOCAB and first.vocab_size == SMALL_VOCAB
    assert "blocks" in repr(first) and f"vocab_size={SMALL_VOCAB}" in repr(first)

    cached = default_corpus(**kwargs, cache_dir=tmp_path)
    uncached = default_corpus(**kwargs)
    for other in (cached, uncached):
        assert torch.equal(other.train, first.train) and torch.equal(other.val, first.val)
        assert other.tokenizer.to_str() == first.tokenizer.to_str()


def test_read_text_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "sub" / "b.md").write_text("beta")
    (tmp_path / "sub" / "c.py").write_text("gamma = 1")
    (tmp_path / "skip.bin").write_bytes(b"\xff\xfe")
    assert read_text_files(tmp_path) == ["alpha", "beta", "gamma = 1"]
    assert read_text_files(tmp_path, suffixes=[".md"]) == ["beta"]
    assert read_text_files([tmp_path / "a.txt", str(tmp_path / "sub" / "b.md")]) == ["alpha", "beta"]


def test_read_text_files_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No UTF-8 text files"):
        read_text_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a file nor a folder"):
        read_text_files(tmp_path / "missing")


def test_hf_dataset_fails_fast_when_offline_and_not_cached(monkeypatch, tmp_path):
    """Offline mode reads the cache (tests/test_hub_offline.py has the cached case); a miss
    names the dataset at once."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="some-org/some-dataset.*not in the local Hugging "
                                              "Face cache and offline mode is on"):
        load_hf_dataset_texts("some-org/some-dataset")
    assert time.monotonic() - start < 10


def test_hf_dataset_fails_fast_when_probe_fails(monkeypatch):
    pytest.importorskip("datasets")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="some-org/some-dataset.*unreachable"):
        load_hf_dataset_texts("some-org/some-dataset")
    assert time.monotonic() - start < 10
