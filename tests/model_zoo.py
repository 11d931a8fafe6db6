"""Small random HookedTransformers covering every model family the engine supports."""

from __future__ import annotations

import pytest
import torch

from tl_vpd.target_model import HAS_HOOKED_TRANSFORMER

if not HAS_HOOKED_TRANSFORMER:  # every module importing this is skipped on TL 4, with the reason
    pytest.skip("builds HookedTransformers (TransformerLens < 4 only)", allow_module_level=True)

from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

BASE = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=16, d_vocab=50,
            seed=0, initializer_range=0.2)

FAMILIES = {
    "gpt2": dict(act_fn="gelu", normalization_type="LN", positional_embedding_type="standard"),
    "llama": dict(act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                  gated_mlp=True, n_key_value_heads=2, final_rms=True),
    "attn_only": dict(attn_only=True, act_fn="gelu", normalization_type="LN"),
    "parallel": dict(act_fn="gelu", normalization_type="LN", parallel_attn_mlp=True,
                     positional_embedding_type="rotary", rotary_dim=4),
    "split_qkv": dict(act_fn="gelu", normalization_type="LN", use_split_qkv_input=True),
    "shortformer": dict(act_fn="relu", normalization_type="LN", positional_embedding_type="shortformer"),
    "sandwich": dict(act_fn="gelu", normalization_type="RMS", use_normalization_before_and_after=True,
                     positional_embedding_type="rotary"),
}


def make_model(family: str, processed: bool = False, dtype=torch.float32) -> HookedTransformer:
    cfg = HookedTransformerConfig(**BASE, **FAMILIES[family], dtype=dtype)
    model = HookedTransformer(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # Random biases and norm gains so that folding and bias handling actually matter.
        for name, p in model.named_parameters():
            if name.endswith(("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "_b_K", "_b_V")):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".w") and ("ln" in name):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".b") and ("ln" in name):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    if processed:
        model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def tokens(batch: int = 2, seq: int = 12, seed: int = 0, vocab: int = 50) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


# Every family, and two with processed weights (folded norms, centred writes).
CASES = [(f, False) for f in FAMILIES] + [("gpt2", True), ("llama", True)]
IDS = [f + ("-processed" if p else "") for f, p in CASES]


def corpus(n=64, seq=12, seed=0):
    """Random token ids ``[n, seq]`` over the zoo's vocabulary."""
    return torch.randint(0, 50, (n, seq), generator=torch.Generator().manual_seed(seed))


def small_cfg(**kw):
    """A short training config for the zoo's models (d_model 32: C=48 >= rank)."""
    from tl_vpd import VPDConfig

    base = dict(C=48, steps=80, batch_size=8, seq_len=12, log_every=10, progress=False,
                faithfulness_warmup_steps=100, coeff_minimality=1e-3, ppgd_inner_steps=1)
    base.update(kw)
    return VPDConfig(**base)
