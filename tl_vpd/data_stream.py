"""The one data adapter: turns the ``data`` argument of :func:`tl_vpd.decompose` (and of
evaluation and target training) into a resumable stream of batches.

``data`` may be an int tensor ``[n, seq]`` of token ids, an iterable of such batches, a
``datasets.Dataset`` or ``datasets.IterableDataset`` with an ``input_ids`` or ``tokens`` column
(rows: equal-length lists of token ids), or (toy models) a callable
``data(batch_size, generator) -> batch``. Bad data raises before training starts.

A ``Dataset`` is read into one tensor and then treated as tensor data (shuffled each epoch). An
``IterableDataset`` is streamed in order, ``batch_size`` consecutive rows per batch; at its end
it starts again with the dataset's epoch set to the pass number (so a shuffled stream reshuffles).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterable, Mapping

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
        n_ctx: if given, token sequences longer than this raise. A ``seq_len`` above it raises
            when the data has sequences longer than ``n_ctx``; when the data is no longer than
            ``n_ctx`` the crop changes nothing, so it only warns (``VPDConfig.seq_len`` defaults to
            128, and a model with a shorter context trained on its own blocks is a working setup).
        d_vocab: if given, token ids outside ``[0, d_vocab)`` raise.
        shuffle: ``"per_epoch"`` or ``"chained"`` (see ``SHUFFLES`` above).
        drop_last: skip each epoch's final incomplete batch of tensor data or of an
            ``IterableDataset`` (else yield it).
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
        self.epoch, self.index = 0, 0  # iterables: passes made, batches read in this pass
        self._warned = False
        self.generator = torch.Generator().manual_seed(seed + 7919)
        self._order = torch.Generator().manual_seed(seed)  # the "chained" permutations
        if hasattr(data, "column_names") and not torch.is_tensor(data):
            data = _from_hf_dataset(data, batch_size, drop_last)
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
            first = next(self._it, None)
            if first is None and isinstance(data, _DatasetBatches):
                raise ValueError(f"the dataset yields no full batch of batch_size={batch_size} rows "
                                 "(it has fewer rows); pass more rows or a smaller batch_size")
            self._peeked = self._check_tokens(first, "the first batch of data")
        else:
            raise TypeError(
                f"data must be an int tensor [n, seq], an iterable of such batches, a datasets."
                f"Dataset or IterableDataset with an 'input_ids' or 'tokens' column, or a callable; "
                f"got {type(data).__name__}"
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
            if self.seq_len is not None:  # cropped to seq_len, so seq_len > n_ctx
                raise ValueError(f"VPDConfig.seq_len={self.seq_len} is larger than the model's "
                                 f"n_ctx={self.n_ctx}, and {what} has sequences of length "
                                 f"{t.shape[1]}; set VPDConfig.seq_len <= {self.n_ctx}")
            raise ValueError(f"{what} has sequences of length {t.shape[1]}, longer than the "
                             f"model's n_ctx={self.n_ctx}; set VPDConfig.seq_len <= {self.n_ctx}")
        if self.n_ctx is not None and self.seq_len is not None and self.seq_len > self.n_ctx \
                and not self._warned:
            self._warned = True
            warnings.warn(f"VPDConfig.seq_len={self.seq_len} is larger than the model's "
                          f"n_ctx={self.n_ctx}; {what} has sequences of length {t.shape[1]}, so "
                          f"batches have {t.shape[1]} positions. Set VPDConfig.seq_len <= "
                          f"{self.n_ctx} to make this explicit.", UserWarning, stacklevel=3)
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
        self.index += 1
        if self._peeked is not None:
            batch, self._peeked = self._peeked, None
            return batch
        batch = next(self._it, None)
        if batch is None:  # cycle the iterable
            self.epoch, self.index = self.epoch + 1, 1
            self._it = self._restart()
            batch = next(self._it, None)
        return self._check_tokens(batch, "a batch of data")

    def _restart(self):
        """A new pass over the iterable (a dataset's epoch set to the pass number)."""
        if isinstance(self.iterable, _DatasetBatches):
            self.iterable.set_epoch(self.epoch)
        return iter(self.iterable)

    def state_dict(self) -> dict:
        """The stream's position, for checkpoints."""
        state = {"epoch": self.epoch, "index": self.index, "generator": self.generator.get_state()}
        if self.iterable is not None:
            state["iterable"] = True  # "index" counts batches, not examples
        if self.shuffle == "chained" and self.tokens is not None:
            state["order"] = self._order_state
        return state

    def load_state_dict(self, state: dict) -> None:
        """Resume at a position saved by :meth:`state_dict`.

        A ``datasets.IterableDataset`` cannot seek: the stream restarts the saved pass and reads
        and drops the batches the saved run had consumed (as long as reading them takes).
        """
        if bool(state.get("iterable")) != (self.iterable is not None):
            saved = "streamed (an iterable)" if state.get("iterable") else "a tensor or Dataset"
            raise ValueError(f"the saved stream position is for data that was {saved}; resume "
                             "with the same data as the saved run")
        if self.iterable is not None and not isinstance(self.iterable, _DatasetBatches):
            raise ValueError("cannot resume a run whose data is a plain iterable; pass a token "
                             "tensor, a datasets.Dataset or a datasets.IterableDataset so the "
                             "stream position can be restored")
        self.epoch, self.index = state["epoch"], state["index"]
        self.generator.set_state(state["generator"])
        if self.iterable is not None:
            self._it, self._peeked = self._restart(), None
            for read in range(self.index):  # fast-forward past the batches already consumed
                if next(self._it, None) is None:
                    raise ValueError(f"the dataset ended after {read} batches of pass "
                                     f"{self.epoch}, but the saved run had read {self.index}; "
                                     "resume with the same dataset and batch_size")
            return
        if self.tokens is not None:
            if self.shuffle == "chained":
                self._order.set_state(state["order"])
            self._perm = self._permutation()


_TOKEN_COLUMNS = ("input_ids", "tokens")  # in order of preference


class _DatasetBatches:
    """A ``datasets.IterableDataset`` read as token batches: the token column of ``batch_size``
    consecutive rows, stacked into ``[batch_size, seq]`` (the last short batch is dropped when
    ``drop_last``)."""

    def __init__(self, ds, batch_size: int, drop_last: bool):
        self.ds = ds.with_format("torch")  # a copy: set_epoch leaves the caller's dataset alone
        self.batch_size, self.drop_last = batch_size, drop_last
        self.ds.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.ds.set_epoch(epoch)

    def __iter__(self):
        for rows in self.ds.iter(batch_size=self.batch_size, drop_last_batch=self.drop_last):
            yield _token_column(rows, "a batch of the dataset")


def _from_hf_dataset(ds, batch_size: int | None = None, drop_last: bool = False):
    """The token ids of a Hugging Face dataset.

    Arguments:
        ds: a ``datasets.Dataset`` or ``datasets.IterableDataset`` with an ``input_ids`` or
            ``tokens`` column (``input_ids`` wins when both exist).
        batch_size: rows per batch of an ``IterableDataset`` (``None``: 1).
        drop_last: drop an ``IterableDataset``'s last short batch.

    Returns:
        A ``Dataset``'s column as one tensor ``[n, seq]``; for an ``IterableDataset``, a
        re-iterable of ``[batch_size, seq]`` tensors.
    """
    datasets = sys.modules.get("datasets")  # imported already if ds is one of its objects
    if isinstance(ds, Mapping) or isinstance(getattr(ds, "column_names", None), Mapping):
        splits = list(ds.keys()) if hasattr(ds, "keys") else list(ds.column_names)
        example = f", e.g. data[{splits[0]!r}]" if splits else ""
        raise TypeError(f"data is a {type(ds).__name__} with splits {splits}, not one dataset; "
                        f"pick a split{example}")
    if datasets is not None and isinstance(ds, datasets.IterableDataset):
        return _DatasetBatches(ds, batch_size or 1, drop_last)
    column = _pick_column(ds.column_names)
    if len(ds) == 0:
        raise ValueError("the dataset has no rows")
    return _token_column({column: ds.with_format("torch", columns=[column])[:][column]},
                         "the dataset")


def _pick_column(names) -> str:
    for col in _TOKEN_COLUMNS:
        if col in names:
            return col
    raise ValueError(f"the dataset has no 'input_ids' or 'tokens' column (columns: {list(names)}); "
                     "rename its token-id column to one of these")


def _token_column(rows: Mapping, what: str) -> torch.Tensor:
    """The token column of ``rows`` (a dict of torch-formatted columns) as one tensor."""
    col = _pick_column(rows.keys())
    value = rows[col]
    if torch.is_tensor(value):
        return value
    value = list(value)
    if any(isinstance(v, str) for v in value):
        raise TypeError(f"{what}'s {col!r} column holds text, not token ids; tokenize it first")
    lengths = sorted({len(v) for v in value if hasattr(v, "__len__")})
    if len(lengths) > 1:
        raise ValueError(f"{what}'s {col!r} rows have different lengths ({lengths[0]} to "
                         f"{lengths[-1]} tokens); chunk or pad them to one fixed length first "
                         "(e.g. blocks of seq_len tokens)")
    if not value:
        raise ValueError(f"{what} is empty")
    return torch.stack([torch.as_tensor(v) for v in value])
