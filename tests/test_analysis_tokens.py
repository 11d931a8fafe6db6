"""tl_vpd.analysis._tokens: one ordered pass over token data, and token ids as text."""

import pytest
import torch

from tl_vpd.analysis._tokens import fmt_token, iter_token_batches, looks_like_text, token_decoder


def test_tensor_data_is_read_once_in_order_with_a_partial_last_batch():
    data = torch.arange(5 * 3).view(5, 3)
    batches = list(iter_token_batches(data, 2))
    assert [b.shape[0] for b in batches] == [2, 2, 1]
    assert torch.equal(torch.cat(batches), data)
    assert list(iter_token_batches(torch.arange(4), 8))[0].shape == (1, 4)  # one sequence


def test_iterables_pass_through_and_bad_tokens_raise():
    batches = [torch.zeros(2, 3, dtype=torch.long), torch.ones(3, dtype=torch.long)]
    out = list(iter_token_batches(batches, 99))
    assert out[0] is batches[0] and out[1].shape == (1, 3)
    for bad in (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool), "text", 3):
        with pytest.raises(TypeError):
            list(iter_token_batches(bad, 2))


def test_token_text():
    class Tok:
        def decode(self, ids):
            return f"<{ids[0]}>"

    assert token_decoder(object())(7) == "7"
    assert token_decoder(type("M", (), {"tokenizer": Tok()})())(7) == "<7>"
    assert token_decoder(None, lambda ids: "x" * ids[0])(3) == "xxx"
    assert fmt_token("a\n\tb") == "a\\n\\tb"
    assert looks_like_text([" the", "cat"]) and not looks_like_text(["1", "2"])
