"""tl_vpd.data.tokenizer: BPE training, saving and loading."""

import pytest

from test_corpus import SMALL_VOCAB, small_split  # noqa: F401 (fixture)
from tl_vpd.data.tokenizer import EOS_TOKEN, load_tokenizer, save_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def small_tokenizer(small_split):
    return train_tokenizer(small_split[0], vocab_size=SMALL_VOCAB)


def test_tokenizer_training_is_deterministic(small_split, small_tokenizer):
    again = train_tokenizer(small_split[0], vocab_size=SMALL_VOCAB)
    assert again.to_str() == small_tokenizer.to_str()
    assert small_tokenizer.get_vocab_size() == SMALL_VOCAB
    assert small_tokenizer.token_to_id(EOS_TOKEN) == 0


@pytest.mark.parametrize(
    "text",
    [
        'def f(x: dict[str, "int"]) -> None:\n    return {\'a\': [1, (2, 3)]}  # ok\n\n\tpass\r\n',
        "naïve café — 日本語 😀\n  trailing spaces   \n",
        "",
    ],
)
def test_tokenizer_round_trip(small_tokenizer, text, tmp_path):
    ids = small_tokenizer.encode(text).ids
    assert small_tokenizer.decode(ids) == text
    reloaded = load_tokenizer(save_tokenizer(small_tokenizer, tmp_path))
    assert reloaded.encode(text).ids == ids
