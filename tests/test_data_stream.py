"""tl_vpd.data_stream.DataStream: the one data adapter (its use by training: test_decompose.py)."""

import math

import datasets  # installed with transformer-lens
import pytest
import torch

from tl_vpd.data_stream import DataStream
from model_zoo import make_model, tokens


def _take(stream, k):
    return [stream.next() for _ in range(k)]


@pytest.mark.parametrize("shuffle", ["per_epoch", "chained"])
def test_a_resumed_stream_continues_where_it_stopped(shuffle):
    data = torch.arange(22).view(11, 2)
    stream = DataStream(data, 3, None, seed=5, shuffle=shuffle)
    _take(stream, 5)  # into the second epoch
    state = stream.state_dict()
    expected = _take(stream, 7)
    resumed = DataStream(data, 3, None, seed=5, shuffle=shuffle)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(_take(resumed, 7), expected))


def test_each_epoch_covers_the_data_once():
    data = torch.arange(20).view(10, 2)
    for drop_last, sizes in ((True, [4, 4]), (False, [4, 4, 2])):
        stream = DataStream(data, 4, None, seed=1, shuffle="chained", drop_last=drop_last)
        assert stream.batches_per_epoch == len(sizes)
        for _ in range(2):
            epoch = _take(stream, len(sizes))
            assert [len(b) for b in epoch] == sizes
            rows = torch.cat(epoch)[:, 0].tolist()
            assert len(set(rows)) == len(rows)


def test_unknown_shuffle_is_refused():
    with pytest.raises(ValueError, match="shuffle must be one of"):
        DataStream(torch.zeros(4, 2, dtype=torch.long), 2, None, shuffle="random")


def test_for_model_takes_the_context_and_vocabulary_from_the_model():
    model = make_model("llama")
    n_ctx, d_vocab = model.cfg.n_ctx, model.cfg.d_vocab
    stream = DataStream.for_model(tokens(8, n_ctx), model, 4, seed=0)
    assert (stream.n_ctx, stream.d_vocab, stream.seq_len) == (n_ctx, d_vocab, n_ctx)
    assert DataStream.for_model(tokens(8, n_ctx), model, 4, seq_len=5).next().shape == (4, 5)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        DataStream.for_model(torch.full((4, 3), d_vocab), model, 2)
    toy = torch.nn.Linear(2, 2)  # no TransformerLens cfg: no token checks, no cropping
    stream = DataStream.for_model(lambda b, g: torch.rand(b, 2, generator=g), toy, 4)
    assert (stream.n_ctx, stream.d_vocab, stream.seq_len) == (None, None, None)
    assert stream.next().shape == (4, 2)


# ---------------------------------------------------------------- Hugging Face datasets


def _rows(n=10, seq=3):
    return [[i + j for j in range(seq)] for i in range(n)]


def test_a_dataset_is_read_as_tensor_data():
    rows = _rows()
    ds = datasets.Dataset.from_dict({"input_ids": rows, "text": [str(r) for r in rows]})
    stream = DataStream(ds, 4, None, seed=3)
    assert stream.tokens.dtype == torch.long and torch.equal(stream.tokens, torch.tensor(rows))
    same = DataStream(torch.tensor(rows), 4, None, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(_take(stream, 5), _take(same, 5)))
    by_tokens = DataStream(datasets.Dataset.from_dict({"tokens": rows}), 4, None)
    assert torch.equal(by_tokens.tokens, torch.tensor(rows))


def test_input_ids_is_preferred_over_tokens():
    ds = datasets.Dataset.from_dict({"tokens": [[0, 0]] * 4, "input_ids": [[1, 2]] * 4})
    assert torch.equal(DataStream(ds, 2, None).tokens, torch.tensor([[1, 2]] * 4))


@pytest.mark.parametrize("iterable", [False, True], ids=["Dataset", "IterableDataset"])
def test_bad_datasets_are_refused_clearly(iterable):
    def make(columns):
        ds = datasets.Dataset.from_dict(columns)
        return ds.to_iterable_dataset() if iterable else ds

    with pytest.raises(ValueError, match=r"no 'input_ids' or 'tokens' column \(columns: \['ids', 'text'\]"):
        DataStream(make({"ids": _rows(4), "text": ["a"] * 4}), 2, None)
    with pytest.raises(ValueError, match="different lengths.*chunk or pad"):
        DataStream(make({"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8], [9, 1, 2]]}), 4, None)
    with pytest.raises(TypeError, match="holds text, not token ids"):
        DataStream(make({"tokens": ["a b", "c d"]}), 2, None)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        DataStream(make({"input_ids": _rows(4)}), 2, None, d_vocab=3)


def test_a_dataset_dict_asks_for_a_split():
    ds = datasets.Dataset.from_dict({"input_ids": _rows(4)})
    for dd in (datasets.DatasetDict({"train": ds, "test": ds}),
               datasets.IterableDatasetDict({"train": ds.to_iterable_dataset()})):
        with pytest.raises(TypeError, match=r"splits \['train'.*pick a split, e.g. data\['train'\]"):
            DataStream(dd, 2, None)
    with pytest.raises(ValueError, match="no rows"):
        DataStream(datasets.Dataset.from_dict({"input_ids": []}), 2, None)


def test_an_iterable_dataset_streams_its_rows_in_order():
    rows = torch.tensor(_rows(10))
    ds = datasets.Dataset.from_dict({"input_ids": rows.tolist()}).to_iterable_dataset()
    stream = DataStream(ds, 3, 2)
    # The last short batch (1 row) is dropped; then the stream starts a second pass.
    expected = [rows[i:i + 3, :2] for i in (0, 3, 6)] * 2
    got = _take(stream, 6)
    assert all(b.dtype == torch.long and torch.equal(a, b) for a, b in zip(got, expected))
    assert (stream.epoch, stream.index) == (1, 3)
    keep_last = DataStream(ds, 3, None, drop_last=False)
    assert [len(b) for b in _take(keep_last, 5)] == [3, 3, 3, 1, 3]
    with pytest.raises(ValueError, match="no full batch of batch_size=20"):
        DataStream(ds, 20, None)


@pytest.mark.filterwarnings("ignore:To copy construct from a tensor")  # inside datasets' map
def test_an_iterable_dataset_with_unknown_columns_is_read():
    ds = datasets.Dataset.from_dict({"x": _rows(4)}).to_iterable_dataset()
    ds = ds.map(lambda row: {"input_ids": row["x"]}, remove_columns=["x"])  # column_names: None
    assert torch.equal(DataStream(ds, 2, None).next(), torch.tensor(_rows(2)))


@pytest.mark.parametrize("shuffled", [False, True])
def test_a_resumed_iterable_dataset_continues_where_it_stopped(shuffled):
    ds = datasets.Dataset.from_dict({"input_ids": _rows(11)}).to_iterable_dataset(num_shards=2)
    if shuffled:  # reshuffled each pass (set_epoch): the resumed run must see the same order
        ds = ds.shuffle(seed=4, buffer_size=5)
    for stop in (2, 4, 7):  # mid-pass, at the end of the first pass, mid second pass
        stream = DataStream(ds, 3, None)
        _take(stream, stop)
        state = stream.state_dict()
        expected = _take(stream, 6)
        resumed = DataStream(ds, 3, None)
        resumed.load_state_dict(state)
        assert all(torch.equal(a, b) for a, b in zip(_take(resumed, 6), expected))
    if shuffled:
        first, second = (torch.cat(_take(DataStream(ds, 3, None), 6)[k:k + 3]) for k in (0, 3))
        assert not torch.equal(first, second)


def test_resuming_needs_the_same_kind_of_data():
    ds = datasets.Dataset.from_dict({"input_ids": _rows(6)})
    streamed = DataStream(ds.to_iterable_dataset(), 2, None)
    with pytest.raises(ValueError, match="same data"):
        DataStream(ds, 2, None).load_state_dict(streamed.state_dict())
    short = DataStream(datasets.Dataset.from_dict({"input_ids": _rows(2)}).to_iterable_dataset(), 2, None)
    _take(streamed, 2)
    with pytest.raises(ValueError, match="ended after 1 batches"):
        short.load_state_dict(streamed.state_dict())
    plain = DataStream([torch.zeros(2, 3, dtype=torch.long)], 2, None)
    with pytest.raises(ValueError, match="plain iterable"):
        plain.load_state_dict(plain.state_dict())


def test_seq_len_above_n_ctx():
    with pytest.raises(ValueError, match="seq_len=64 is larger than the model's n_ctx=16.*length 40"):
        DataStream(torch.zeros(4, 40, dtype=torch.long), 2, 64, n_ctx=16)
    # Data that fits the context is not cropped by the larger seq_len: it trains, with a warning.
    with pytest.warns(UserWarning, match="seq_len=128 is larger than the model's n_ctx=16.*8 positions"):
        stream = DataStream(torch.zeros(4, 8, dtype=torch.long), 2, 128, n_ctx=16)
    assert stream.next().shape == (2, 8)


def test_decompose_trains_on_a_dataset():
    import tl_vpd
    from model_zoo import corpus, small_cfg

    rows = corpus(n=16)
    cfg = small_cfg(steps=2, C=8, log_every=1)
    on_tensor = tl_vpd.decompose(make_model("gpt2"), cfg, rows).history
    on_dataset = tl_vpd.decompose(make_model("gpt2"), cfg,
                                  datasets.Dataset.from_dict({"input_ids": rows.tolist()})).history
    assert on_dataset == on_tensor  # the same batches, so the same run
    streamed = datasets.Dataset.from_dict({"tokens": rows.tolist()}).to_iterable_dataset()
    history = tl_vpd.decompose(make_model("gpt2"), cfg, streamed).history
    assert history[-1]["step"] == 2 and all(map(math.isfinite, history[-1].values()))
