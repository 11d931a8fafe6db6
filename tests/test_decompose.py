"""decompose(): the entry point checks its data before training."""

import pytest
import torch

import tl_vpd
from model_zoo import corpus, make_model, small_cfg



def test_bad_data_rejected_before_training():
    model = make_model("gpt2")
    cfg = small_cfg(steps=2)
    with pytest.raises(TypeError, match="integer token ids"):
        tl_vpd.decompose(model, cfg, torch.rand(16, 12))
    with pytest.raises(ValueError, match="n_ctx"):
        tl_vpd.decompose(model, cfg.replace(seq_len=64), torch.randint(0, 50, (16, 40)))
    with pytest.raises(ValueError, match="vocabulary"):
        tl_vpd.decompose(model, cfg, torch.randint(0, 500, (16, 12)))
    with pytest.raises(ValueError, match="empty"):
        tl_vpd.decompose(model, cfg, [])
    with pytest.raises(ValueError, match="fewer than"):
        tl_vpd.decompose(model, cfg, corpus(n=3))


def test_data_is_required():
    model = make_model("gpt2")
    with pytest.raises(TypeError):
        tl_vpd.decompose(model, small_cfg(steps=1))  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="decompose needs data"):
        tl_vpd.decompose(model, small_cfg(steps=1), None)
