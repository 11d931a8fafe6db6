"""Token blocks and batches: documents cut into fixed-length blocks, and shuffled batches of them
(through the one data adapter, :class:`tl_vpd.data_stream.DataStream`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from tl_vpd._typing import Int
from tl_vpd.data.tokenizer import eos_id
from tl_vpd.data_stream import DataStream

__all__ = ["iterate_batches", "tokenize_blocks"]


def tokenize_blocks(
    texts: Sequence[str],
    tokenizer: Tokenizer,
    seq_len: int,
    max_blocks: int | None = None,
    progress: bool = True,
) -> Int[torch.Tensor, "n seq"]:
    """Tokenize documents into contiguous, non-overlapping blocks of ``seq_len`` tokens.

    Documents are concatenated, each preceded by ``<|endoftext|>`` (so it is both the BOS of one
    document and the EOS of the previous one), and the stream is cut into blocks. The incomplete
    final block is dropped.

    Arguments:
        texts: Documents, in order.
        tokenizer: A tokenizer with an ``<|endoftext|>`` token.
        seq_len: Tokens per block.
        max_blocks: Stop after this many blocks (and stop tokenizing early).
        progress: Show a progress bar when there is more than one chunk of documents.

    Returns:
        An int64 tensor of blocks.
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}.")
    eos = eos_id(tokenizer)
    max_tokens = None if max_blocks is None else max_blocks * seq_len
    stream: list[int] = []
    chunk = 256  # documents per encode_batch call; lets max_blocks stop early
    starts = range(0, len(texts), chunk)
    for start in tqdm(starts, desc="tokenizing", leave=False, disable=not progress or len(starts) <= 1):
        for encoding in tokenizer.encode_batch(list(texts[start : start + chunk]), add_special_tokens=False):
            stream.append(eos)
            stream.extend(encoding.ids)
        if max_tokens is not None and len(stream) >= max_tokens:
            break
    n_blocks = len(stream) // seq_len
    if max_blocks is not None:
        n_blocks = min(n_blocks, max_blocks)
    if n_blocks == 0:
        raise ValueError(f"{len(stream)} tokens are not enough for one block of seq_len={seq_len}.")
    return torch.tensor(stream[: n_blocks * seq_len], dtype=torch.int64).view(n_blocks, seq_len)


def iterate_batches(
    tokens: Int[torch.Tensor, "n seq"],
    batch_size: int,
    seed: int = 0,
    drop_last: bool = True,
    epochs: int | None = None,
) -> Iterator[Int[torch.Tensor, "batch seq"]]:
    """Shuffled batches of blocks, reshuffled every epoch; deterministic for a seed.

    A :class:`~tl_vpd.data_stream.DataStream` with ``shuffle="chained"`` (one generator seeded
    by ``seed`` draws each epoch's permutation), the order trained targets were made with.

    Arguments:
        tokens: Token blocks.
        batch_size: Blocks per batch.
        seed: Seed of the shuffling.
        drop_last: Skip each epoch's final incomplete batch.
        epochs: Number of passes over ``tokens``; ``None`` iterates forever.

    Returns:
        An iterator of batches.
    """
    n = tokens.shape[0]
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if drop_last and batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} blocks available with drop_last=True.")
    stream = DataStream(tokens, batch_size, None, seed, shuffle="chained", drop_last=drop_last)
    total = None if epochs is None else epochs * stream.batches_per_epoch
    count = 0
    while total is None or count < total:
        yield stream.next()
        count += 1
