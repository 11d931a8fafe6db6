"""The one data adapter: turns the ``data`` argument of :func:`tl_vpd.decompose` (and of
evaluation and target training) into a resumable stream of batches.

``data`` may be an int tensor ``[n, seq]`` of token ids, an iterable of such batches, a
``datasets.Dataset`` with an ``input_ids`` or ``tokens`` column, or (toy models) a callable
``data(batch_size, generator) -> batch``. Bad data raises before training starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["SHUFFLES", "DataStream"]

# How tensor data is reshuffled each epoch:
# "per_epoch": a permutation seeded by (seed, epoch), so (epoch, index) is the whole state and a
#   resumed run sees the same batches (the decomposition's training stream);
# "chained": one generator seeded by ``seed`` draws every epoch's permutation in turn (the target
#   training's order since its first version; kept so trained targets do not change).
SHUFFLES = ("per_epoch", "chained")


class DataStream:
    """Batches of ``batch_size`` examples; token sequences are cropped to ``seq_len``.

    Arguments:
        data: the data, in any form listed in the module docstring.
        batch_size: examples per batch.
        seq_len: crop token sequences to this length (``None``: keep them).
        seed: seeds the shuffling of tensor data and the generator handed to callable data.
        n_ctx: if given, token sequences longer than this raise.
        d_vocab: if given, token ids outside ``[0, d_vocab)`` raise.
        shuffle: ``"per_epoch"`` or ``"chained"`` (see ``SHUFFLES`` above).
        drop_last: skip each epoch's final incomplete batch of tensor data (else yield it).
    """

    def __init__(self, data, batch_size: int, seq_len: int | None, seed: int = 0,
                 n_ctx: int | None = None, d_vocab: int | None = None, *,
                 shuffle: str = "per_epoch", drop_last: bool = True):
        if shuffle not in SHUFFLES:
            raise ValueError(f"shuffle must be one of {SHUFFLES}, got {shuffle!r}")
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.n_ctx, self.d_vocab = n_ctx, d_vocab
        self.shuffle, self.drop_last = shuffle, drop_last
        self.tokens: torch.Tensor | None = None
        self.fn: Callable | None = None
        self.iterable: Iterable | None = None
        self.epoch, self.index = 0, 0
        self.generator = torch.Generator().manual_seed(seed + 7919)
        self._order = torch.Generator().manual_seed(seed)  # the "chained" permutations
        if hasattr(data, "column_names") and not torch.is_tensor(data):
            data = _from_hf_dataset(data)
        if torch.is_tensor(data):
            self.tokens = self._check_tokens(data, "data")
            if drop_last and self.tokens.shape[0] < batch_size:
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

    @classmethod
    def for_model(cls, data, model: nn.Module, batch_size: int, seq_len: int | None = None,
                  seed: int = 0, **kwargs) -> DataStream:
        """A stream checked against ``model``: ``n_ctx`` and ``d_vocab`` come from its
        TransformerLens-style ``cfg`` (models without one, e.g. the toys, get no token checks).

        Arguments:
            seq_len: crop length; ``None`` means the model's ``n_ctx``.
            **kwargs: ``shuffle``, ``drop_last`` (see the class).
        """
        mcfg = getattr(model, "cfg", None)
        n_ctx, d_vocab = getattr(mcfg, "n_ctx", None), getattr(mcfg, "d_vocab", None)
        return cls(data, batch_size, seq_len or n_ctx, seed=seed, n_ctx=n_ctx, d_vocab=d_vocab,
                   **kwargs)

    @property
    def batches_per_epoch(self) -> int | None:
        """Batches in one pass over tensor data (``None`` for other data)."""
        if self.tokens is None:
            return None
        n = self.tokens.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

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
        n = self.tokens.shape[0]
        if self.shuffle == "chained":
            self._order_state = self._order.get_state()  # restores this epoch's draw on resume
            return torch.randperm(n, generator=self._order)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(n, generator=g)

    def next(self):
        """The next batch (tensor data wraps around into a new, reshuffled epoch)."""
        if self.tokens is not None:
            n = self.tokens.shape[0]
            end = self.index + self.batch_size if self.drop_last else self.index + 1
            if end > n:
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
        """The stream's position, for checkpoints."""
        state = {"epoch": self.epoch, "index": self.index, "generator": self.generator.get_state()}
        if self.shuffle == "chained" and self.tokens is not None:
            state["order"] = self._order_state
        return state

    def load_state_dict(self, state: dict) -> None:
        """Resume at a position saved by :meth:`state_dict`."""
        if self.iterable is not None:
            raise ValueError("cannot resume a run whose data is a plain iterable; pass a token "
                             "tensor or a dataset so the stream position can be restored")
        self.epoch, self.index = state["epoch"], state["index"]
        self.generator.set_state(state["generator"])
        if self.tokens is not None:
            if self.shuffle == "chained":
                self._order.set_state(state["order"])
            self._perm = self._permutation()


def _from_hf_dataset(ds) -> torch.Tensor:
    for col in ("input_ids", "tokens"):
        if col in ds.column_names:
            return torch.as_tensor(ds.with_format("torch")[col])
    raise ValueError(f"the dataset has no 'input_ids' or 'tokens' column (columns: {ds.column_names})")
