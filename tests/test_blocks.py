"""tl_vpd.data.blocks: token blocks, and the shuffled batches of target training."""

import pytest
import torch

from test_tokenizer import small_split, small_tokenizer  # noqa: F401 (fixtures)
from tl_vpd.data.blocks import iterate_batches, tokenize_blocks


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


def _reference_iterate_batches(tokens, batch_size, seed, drop_last, epochs):
    """The loop iterate_batches ran before it went through DataStream, kept verbatim as the
    reference: one generator draws every epoch's permutation in turn."""
    n = tokens.shape[0]
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield tokens[order[start : start + batch_size]]


@pytest.mark.parametrize("n,batch_size,drop_last", [(10, 4, True), (10, 4, False), (12, 4, True),
                                                    (12, 4, False), (7, 3, True), (7, 3, False),
                                                    (3, 5, False)])
def test_iterate_batches_order_is_unchanged(n, batch_size, drop_last):
    """Trained targets depend on this order: it must stay exactly the original one."""
    tokens = torch.arange(n * 2).view(n, 2)
    new = list(iterate_batches(tokens, batch_size, seed=3, drop_last=drop_last, epochs=4))
    old = list(_reference_iterate_batches(tokens, batch_size, 3, drop_last, 4))
    assert len(new) == len(old)
    assert all(torch.equal(a, b) for a, b in zip(new, old))
