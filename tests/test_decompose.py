"""decompose(): the entry point checks its data before training."""

import pytest
import torch

import tl_vpd
from tl_vpd import VPDConfig
from model_zoo import make_model


def corpus(n=64, seq=12, seed=0):
    return torch.randint(0, 50, (n, seq), generator=torch.Generator().manual_seed(seed))

def small_cfg(**kw):
    base = dict(C=48, steps=80, batch_size=8, seq_len=12, log_every=10, progress=False,
                faithfulness_warmup_steps=100, coeff_minimality=1e-3, ppgd_inner_steps=1)
    base.update(kw)
    return VPDConfig(**base)

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
