"""tl_vpd.data_stream.DataStream: the one data adapter (its use by training: test_decompose.py)."""

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
