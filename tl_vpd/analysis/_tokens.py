"""Tokens for analysis: one ordered pass over the data in batches, and ids shown as text.

:func:`iter_token_batches` is not :class:`tl_vpd.data_stream.DataStream`: training needs an
endless, shuffled stream of full batches (it cycles, permutes each epoch and refuses fewer
sequences than ``batch_size``), while an analysis pass reads every sequence exactly once, in
order, including a last partial batch, so that harvested positions can be named by their index
in the data. It shares the data formats (and the dataset adapter) with ``DataStream``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from tl_vpd._typing import Int
from tl_vpd.data_stream import _from_hf_dataset

__all__ = ["fmt_token", "iter_token_batches", "looks_like_text", "token_decoder"]


def token_decoder(model, decode: Callable | None = None) -> Callable[[int], str]:
    """``id -> str``: ``decode([id])`` if given, else the model's tokenizer, else ``str(id)``."""
    if decode is None:
        tok = getattr(model, "tokenizer", None)
        decode = None if tok is None else tok.decode
    if decode is None:
        return str
    return lambda i: decode([int(i)])


def iter_token_batches(data, batch_size: int) -> Iterator[Int[torch.Tensor, "batch seq"]]:
    """Batches ``[b, seq]`` of token ids, in order, from any ``data`` the library accepts
    (a tensor ``[n, seq]`` or ``[seq]``, an iterable of batches, a dataset with an
    ``input_ids``/``tokens`` column)."""
    if hasattr(data, "column_names") and not torch.is_tensor(data):
        data = _from_hf_dataset(data)
    if torch.is_tensor(data):
        data = data[None] if data.dim() == 1 else data
        _check_tokens(data)
        yield from data.split(batch_size)
        return
    if not isinstance(data, Iterable) or isinstance(data, str | bytes):
        raise TypeError(f"data must be token ids [n, seq] or an iterable of batches, got "
                        f"{type(data).__name__}")
    for batch in data:
        batch = batch[None] if torch.is_tensor(batch) and batch.dim() == 1 else batch
        _check_tokens(batch)
        yield batch


def _check_tokens(t) -> None:
    if not torch.is_tensor(t) or t.dtype.is_floating_point or t.dtype == torch.bool or t.dim() != 2:
        raise TypeError("expected an integer tensor of token ids [batch, seq], got "
                        f"{type(t).__name__} {getattr(t, 'dtype', '')} {tuple(getattr(t, 'shape', ()))}")


def fmt_token(s: str) -> str:
    """A token with its newlines and tabs visible."""
    return s.replace("\n", "\\n").replace("\t", "\\t")


def looks_like_text(tokens: Sequence[str]) -> bool:
    """Whether tokens carry their own spaces (sub-word tokenizers); plain ids or words need
    separators when joined."""
    return any(t.startswith(" ") for t in tokens)
