import socket
import time

import pytest
import torch

from tl_vpd.data import (
    EOS_TOKEN,
    LMCorpus,
    default_corpus,
    iterate_batches,
    load_hf_dataset_texts,
    load_tokenizer,
    read_text_files,
    save_tokenizer,
    stdlib_corpus,
    tokenize_blocks,
    train_tokenizer,
)

SMALL_BYTES = 300_000
SMALL_VOCAB = 512


@pytest.fixture(scope="module")
def small_split():
    return stdlib_corpus(max_bytes=SMALL_BYTES)


@pytest.fixture(scope="module")
def small_tokenizer(small_split):
    return train_tokenizer(small_split[0], vocab_size=SMALL_VOCAB)


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


def test_tokenizer_training_is_deterministic(small_split, small_tokenizer):
    again = train_tokenizer(small_split[0], vocab_size=SMALL_VOCAB)
    assert again.to_str() == small_tokenizer.to_str()
    assert small_tokenizer.get_vocab_size() == SMALL_VOCAB
    assert small_tokenizer.token_to_id(EOS_TOKEN) == 0


@pytest.mark.parametrize(
    "text",
    [
        'def f(x: dict[str, "int"]) -> None:\n    return {\'a\': [1, (2, 3)]}  # ok\n\n\tpass\r\n',
        "naïve café — 日本語 😀\n  trailing spaces   \n",
        "",
    ],
)
def test_tokenizer_round_trip(small_tokenizer, text, tmp_path):
    ids = small_tokenizer.encode(text).ids
    assert small_tokenizer.decode(ids) == text
    reloaded = load_tokenizer(save_tokenizer(small_tokenizer, tmp_path))
    assert reloaded.encode(text).ids == ids


def test_tokenize_blocks_layout(small_tokenizer):
    texts = ["def a():\n    return 1\n", "x = [1, 2, 3]\n" * 20, "print('hi')\n"]
    blocks = tokenize_blocks(texts, small_tokenizer, seq_len=16)
    stream = []
    for text in texts:
        stream += [0] + small_tokenizer.encode(text).ids
    assert blocks.dtype == torch.int64
    assert blocks.shape == (len(stream) // 16, 16)
    assert blocks.flatten().tolist() == stream[: blocks.numel()]
    assert torch.equal(tokenize_blocks(texts, small_tokenizer, seq_len=16, max_blocks=2), blocks[:2])
    with pytest.raises(ValueError, match="not enough for one block"):
        tokenize_blocks(["x"], small_tokenizer, seq_len=1000)


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


def test_iterate_batches_is_deterministic_and_covers_each_epoch():
    tokens = torch.arange(10 * 3).view(10, 3)
    batches = list(iterate_batches(tokens, batch_size=4, seed=1, epochs=2))
    assert len(batches) == 4 and all(b.shape == (4, 3) for b in batches)
    for epoch in (batches[:2], batches[2:]):
        rows = torch.cat(epoch)[:, 0].tolist()
        assert len(set(rows)) == 8
    again = list(iterate_batches(tokens, batch_size=4, seed=1, epochs=2))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    other_seed = list(iterate_batches(tokens, batch_size=4, seed=2, epochs=2))
    assert not all(torch.equal(a, b) for a, b in zip(batches, other_seed))
    kept = list(iterate_batches(tokens, batch_size=4, seed=1, drop_last=False, epochs=1))
    assert [len(b) for b in kept] == [4, 4, 2]


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


def test_hf_dataset_fails_fast_when_offline_env_set(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="some-org/some-dataset.*unreachable"):
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
