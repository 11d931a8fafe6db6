"""The byte-level BPE tokenizer of the default corpus: training, saving, loading."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tl_vpd import atomic
from tl_vpd.layout import TOKENIZER_FILE

__all__ = ["EOS_TOKEN", "TOKENIZER_FILE", "eos_id", "load_tokenizer", "save_tokenizer",
           "train_tokenizer"]

EOS_TOKEN = "<|endoftext|>"  # id 0; BOS, EOS and document separator at once


def train_tokenizer(texts: Sequence[str], vocab_size: int = 4096) -> Tokenizer:
    """Train a byte-level BPE tokenizer (GPT-2 style) on ``texts``.

    Every byte is in the vocabulary, so any string round-trips through encode/decode exactly.
    ``<|endoftext|>`` has id 0 and serves as BOS, EOS and document separator. Training is
    deterministic: merges are counted over the whole corpus, so there is no seed.

    Arguments:
        texts: Training documents.
        vocab_size: Final vocabulary size, including the 256 byte tokens and ``<|endoftext|>``.

    Returns:
        The trained ``tokenizers.Tokenizer``.
    """
    n_base = len(pre_tokenizers.ByteLevel.alphabet()) + 1
    if vocab_size < n_base:
        raise ValueError(f"vocab_size must be at least {n_base} (256 bytes + {EOS_TOKEN}), got {vocab_size}.")
    if not texts:
        raise ValueError("train_tokenizer needs at least one text.")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> Path:
    """Save ``tokenizer`` as JSON; a folder ``path`` gets ``tokenizer.json`` inside it.

    Returns:
        The file written.
    """
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / TOKENIZER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, tokenizer.to_str(pretty=True))  # a kill never leaves half a file
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer saved by :func:`save_tokenizer` (a ``tokenizer.json`` file or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No tokenizer file at {path}.")
    return Tokenizer.from_file(str(path))


def eos_id(tokenizer: Tokenizer) -> int:
    """The id of ``<|endoftext|>``; raises if the tokenizer has none."""
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    if eos_id is None:
        raise ValueError(f"Tokenizer has no {EOS_TOKEN!r} token; build it with train_tokenizer.")
    return eos_id
