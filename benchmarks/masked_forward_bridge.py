"""Masked forward cost on a TransformerBridge: plain bridge forward vs the hooked masked forward.

    python benchmarks/masked_forward_bridge.py [--quick]

Target (bridge issue): hooked masked forward ≤ 3× the plain forward at C = 4·d_model, on the
benchmark architecture (4 layers, d_model 128, LLaMA-style) as a TL-native bridge and as an HF
LLaMA (gated MLP, GQA) booted through ``boot_transformers``.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402

from _common import machine, random_masks, time_masked_forward  # noqa: E402
from tl_vpd import Decomposition  # noqa: E402

try:  # TL 4 exports it at top level; TL 3.9 only from transformer_lens.config
    from transformer_lens import TransformerBridgeConfig  # noqa: E402
except ImportError:
    from transformer_lens.config import TransformerBridgeConfig  # noqa: E402

D_MODEL, N_LAYERS, N_HEADS, D_MLP, N_CTX, D_VOCAB = 128, 4, 4, 512, 128, 4096


def native_bridge() -> TransformerBridge:
    """The benchmark target of ``_common.bench_model`` (RMS, rotary, GELU MLP), TL-native."""
    cfg = TransformerBridgeConfig(
        n_layers=N_LAYERS, d_model=D_MODEL, n_heads=N_HEADS, d_head=D_MODEL // N_HEADS,
        d_mlp=D_MLP, n_ctx=N_CTX, d_vocab=D_VOCAB, act_fn="gelu", normalization_type="RMS",
        positional_embedding_type="rotary", final_rms=True)
    return TransformerBridge.boot_native(cfg)


def hf_llama_bridge() -> TransformerBridge:
    """A random HF LLaMA of the same size (gated SiLU MLP, 2 KV heads), booted offline."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from bridge_zoo import tiny_tokenizer  # the offline tokenizer recipe; its vocab is unused here

    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS, num_key_value_heads=2, max_position_embeddings=N_CTX,
        vocab_size=D_VOCAB))
    return TransformerBridge.boot_transformers("bench-llama", hf_model=hf.eval(),
                                               tokenizer=tiny_tokenizer())


def flop_ratio(dec, T: int) -> float:
    """(plain + factorized term) / plain forward FLOPs per token: the cost floor of the swap."""
    dense = sum(2 * c.d_out * c.d_in for c in dec.components.values())
    attn = N_LAYERS * 2 * 2 * T * D_MODEL  # QKᵀ and pattern·V (n_heads · d_head = d_model)
    plain = dense + attn + 2 * D_MODEL * D_VOCAB
    factor = sum(2 * c.C * (c.d_in + c.d_out) for c in dec.components.values())
    return (plain + factor) / plain


def bench(name: str, model: TransformerBridge, B: int, T: int, reps: int) -> float:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    dec = Decomposition.from_model(model, C=4 * D_MODEL)
    toks = torch.randint(0, D_VOCAB, (B, T), generator=torch.Generator().manual_seed(0))
    masks, dmasks = random_masks(dec, B, T)
    t = time_masked_forward(model, dec, toks, masks, dmasks, reps)
    ratio = t["masked"] / t["plain"]
    print(f"{name:<10}{len(dec.sites):>6}{t['plain'] * 1e3:>11.1f}{t['masked'] * 1e3:>11.1f}"
          f"{t['masked_bwd'] * 1e3:>15.1f}{flop_ratio(dec, T):>8.2f}{ratio:>10.2f}  "
          f"{'PASS' if ratio <= 3 else 'FAIL'}")
    return ratio


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats, smaller batch (CI)")
    args = ap.parse_args()
    torch.manual_seed(0)
    B, T = (2, 64) if args.quick else (8, 128)
    reps = 3 if args.quick else 10
    print(f"machine: {machine()}")
    print(f"bridge models: {N_LAYERS} layers, d_model {D_MODEL}, d_mlp {D_MLP}, d_vocab {D_VOCAB}; "
          f"C={4 * D_MODEL} per site, B={B}, T={T}, median of {reps} interleaved rounds")
    print(f"{'model':<10}{'sites':>6}{'plain ms':>11}{'masked ms':>11}{'masked+bwd ms':>15}"
          f"{'FLOPs×':>8}{'time×':>10}  target: time× ≤ 3")
    for name, build in (("native", native_bridge), ("hf_llama", hf_llama_bridge)):
        bench(name, build(), B, T, reps)


if __name__ == "__main__":
    main()
