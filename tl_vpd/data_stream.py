"""Turning the ``data`` argument of :func:`tl_vpd.decompose` into a resumable stream of batches.

``data`` may be an int tensor ``[n, seq]`` of token ids, an iterable of such batches, a
``datasets.Dataset`` with an ``input_ids`` or ``tokens`` column, or (toy models) a callable
``data(batch_size, generator) -> batch``. Bad data raises before training starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

__all__ = ["DataStream"]


class DataStream:
    """Batches of ``batch_size`` examples; token sequences are cropped to ``seq_len``.

    Tensor data is shuffled once per epoch with a permutation seeded by ``(seed, epoch)``, so the
    stream's position (epoch, index) is its whole state and a resumed run sees the same batches.
    """

    def __init__(self, data, batch_size: int, seq_len: int | None, seed: int = 0,
                 n_ctx: int | None = None, d_vocab: int | None = None):
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.n_ctx, self.d_vocab = n_ctx, d_vocab
        self.tokens: torch.Tensor | None = None
        self.fn: Callable | None = None
        self.iterable: Iterable | None = None
        self.epoch, self.index = 0, 0
        self.generator = torch.Generator().manual_seed(seed + 7919)
        if hasattr(data, "column_names") and not torch.is_tensor(data):
            data = _from_hf_dataset(data)
        if torch.is_tensor(data):
            self.tokens = self._check_tokens(data, "data")
            if self.tokens.shape[0] < batch_size:
                raise ValueError(f"data has {self.tokens.shape[0]} sequences, fewer than "
                                 f"batch_size={batch_size}")
            self._perm = self._permutation()
        elif callable(data):
            self.fn = data
        elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
            self.iterable = data
            self._it = iter(data)
            self._peeked = self._check_tokens(next(self._it, None), "the first batch of data")
        else:
            raise TypeError(
                f"data must be an int tensor [n, seq], an iterable of such batches, a datasets."
                f"Dataset with an 'input_ids' or 'tokens' column, or a callable; got {type(data).__name__}"
            )

    def _check_tokens(self, t, what: str) -> torch.Tensor:
        if t is None:
            raise ValueError(f"{what} is empty")
        if not torch.is_tensor(t):
            raise TypeError(f"{what} must be a torch tensor of token ids, got {type(t).__name__}")
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{what} must hold integer token ids, got dtype {t.dtype}")
        if t.dim() != 2 or t.numel() == 0:
            raise ValueError(f"{what} must be a non-empty [n, seq] tensor, got shape {tuple(t.shape)}")
        if self.seq_len is not None and t.shape[1] > self.seq_len:
            t = t[:, : self.seq_len]
        if self.n_ctx is not None and t.shape[1] > self.n_ctx:
            raise ValueError(f"{what} has sequences of length {t.shape[1]}, longer than the "
                             f"model's n_ctx={self.n_ctx}; set VPDConfig.seq_len <= {self.n_ctx}")
        if self.d_vocab is not None and (t.min() < 0 or t.max() >= self.d_vocab):
            raise ValueError(f"{what} has token ids in [{int(t.min())}, {int(t.max())}], outside "
                             f"the model's vocabulary [0, {self.d_vocab})")
        return t.long()

    def _permutation(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.tokens.shape[0], generator=g)

    def next(self):
        if self.tokens is not None:
            if self.index + self.batch_size > self.tokens.shape[0]:
                self.epoch, self.index = self.epoch + 1, 0
                self._perm = self._permutation()
            idx = self._perm[self.index: self.index + self.batch_size]
            self.index += self.batch_size
            return self.tokens[idx]
        if self.fn is not None:
            return self.fn(self.batch_size, self.generator)
        if self._peeked is not None:
            batch, self._peeked = self._peeked, None
            return batch
        batch = next(self._it, None)
        if batch is None:  # cycle the iterable
            self._it = iter(self.iterable)
            batch = next(self._it, None)
        return self._check_tokens(batch, "a batch of data")

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if self.iterable is not None:
            raise ValueError("cannot resume a run whose data is a plain iterable; pass a token "
                             "tensor or a dataset so the stream position can be restored")
        self.epoch, self.index = state["epoch"], state["index"]
        self.generator.set_state(state["generator"])
        if self.tokens is not None:
            self._perm = self._permutation()


def _from_hf_dataset(ds) -> torch.Tensor:
    for col in ("input_ids", "tokens"):
        if col in ds.column_names:
            return torch.as_tensor(ds.with_format("torch")[col])
    raise ValueError(f"the dataset has no 'input_ids' or 'tokens' column (columns: {ds.column_names})")
