"""Small random TransformerBridges, built offline (no hub): TL-native configs and random HF models.

Works on TransformerLens 3.9 and 4.x. Biases and norm gains are randomised so that folding,
centring and bias handling matter in compatibility mode.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup must fail at once, never hang

import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402

try:  # TL 4 exports it at top level; TL 3.9 only from transformer_lens.config
    from transformer_lens import TransformerBridgeConfig  # noqa: E402
except ImportError:
    from transformer_lens.config import TransformerBridgeConfig  # noqa: E402

D_VOCAB = 101
N_LAYERS, D_MODEL, N_HEADS, D_HEAD, D_MLP, N_CTX = 2, 32, 4, 8, 64, 16

_NATIVE = dict(n_layers=N_LAYERS, d_model=D_MODEL, n_heads=N_HEADS, d_head=D_HEAD, d_mlp=D_MLP,
               n_ctx=N_CTX, d_vocab=D_VOCAB)
_HF_COMMON = dict(vocab_size=D_VOCAB, initializer_range=0.2)
_LLAMA_LIKE = dict(hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS,
                   num_attention_heads=N_HEADS, num_key_value_heads=2,
                   max_position_embeddings=N_CTX, **_HF_COMMON)


def _hf(family: str) -> transformers.PreTrainedModel:
    if family == "gpt2":  # fused c_attn, Conv1D weights [in, out], LN, learned positions
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS, n_positions=N_CTX, **_HF_COMMON))
    if family == "llama":  # RMS, rotary, gated SiLU, GQA (2 KV heads), no biases
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**_LLAMA_LIKE))
    if family == "qwen2":  # as LLaMA, plus Q/K/V biases
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**_LLAMA_LIKE))
    if family == "neox":  # fused head-interleaved QKV, parallel attn+MLP, partial rotary
        return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
            hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS,
            num_attention_heads=N_HEADS, max_position_embeddings=N_CTX, rotary_pct=0.5,
            **_HF_COMMON))
    raise KeyError(family)


NATIVE = {
    "native_gpt2": dict(act_fn="gelu", normalization_type="LN",
                        positional_embedding_type="standard"),
    "native_llama": dict(act_fn="silu", normalization_type="RMS",
                         positional_embedding_type="rotary", gated_mlp=True, n_key_value_heads=2,
                         final_rms=True),
}
HF = ("gpt2", "llama", "qwen2", "neox")
FAMILIES = (*NATIVE, *HF)
GATED = {"native_llama", "llama", "qwen2"}
N_KV_HEADS = {"native_llama": 2, "llama": 2, "qwen2": 2}


def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A local word-level tokenizer the bridge accepts without touching the hub (notes §4.1)."""
    vocab = {f"t{i}": i for i in range(D_VOCAB - 3)}
    vocab.update({"<bos>": D_VOCAB - 3, "<eos>": D_VOCAB - 2, "<pad>": D_VOCAB - 1})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        name_or_path="tiny-local", add_bos_token=True)


def _randomise_vectors(module: torch.nn.Module, seed: int) -> None:
    """Random biases and norm gains (HF initialises them to 0 and 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))


def make_bridge(family: str, compat: bool = False, seed: int = 0) -> TransformerBridge:
    """A 2-layer random bridge; ``compat`` enables compatibility mode (folding and centring)."""
    torch.manual_seed(seed)
    if family in NATIVE:
        cfg = TransformerBridgeConfig(**_NATIVE, **NATIVE[family])
        model = TransformerBridge.boot_native(cfg)
        _randomise_vectors(model, seed + 1)
    else:
        hf = _hf(family).eval()
        _randomise_vectors(hf, seed + 1)  # before boot: GPT-2's c_attn is split at boot
        model = TransformerBridge.boot_transformers(f"tiny-{family}", hf_model=hf,
                                                    tokenizer=tiny_tokenizer())
    if compat:
        model.enable_compatibility_mode(disable_warnings=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def tokens(batch: int = 2, seq: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, D_VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


_TWIN_FIELDS = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab", "act_fn",
                "normalization_type", "positional_embedding_type", "rotary_dim", "rotary_base",
                "attn_only", "final_rms", "gated_mlp", "n_key_value_heads", "eps")


def native_twin(hooked) -> TransformerBridge:
    """A ``boot_native`` bridge computing what the HookedTransformer ``hooked`` computes, from
    its weights (TL 3.9, where both exist)."""
    from tl_vpd.target_model import hooked_to_native

    fields = {f: getattr(hooked.cfg, f) for f in _TWIN_FIELDS}
    if hooked.cfg.attn_only:
        fields["d_mlp"] = None
    model = TransformerBridge.boot_native(TransformerBridgeConfig(**fields))
    model.load_state_dict(hooked_to_native(hooked.state_dict(), model.cfg))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
