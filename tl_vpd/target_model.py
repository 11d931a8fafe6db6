"""The target's model class on either TransformerLens: ``HookedTransformer`` (3.x) or a native
``TransformerBridge`` (4.x, which removed HookedTransformer), and weights that move between them.

:func:`model_config` builds the config of :func:`tl_vpd.target.target_config`'s architecture
(RMSNorm, rotary, non-gated GELU MLP) for the installed TransformerLens; :func:`build_model`
builds the model (initialised from ``cfg.seed``) and :func:`load_weights` loads a saved state
dict of either layout into it, so a target trained on one version loads on the other.

The two layouts compute the same function from the same weights up to one permutation: the
bridge's native model rotates *adjacent* pairs ``(2i, 2i+1)`` of each query/key head, while
HookedTransformer rotates the halves ``(i, i + rotary_dim/2)`` (both with frequency ``i``). Moving
weights permutes each Q/K head's dimensions accordingly; ``q · k`` is unchanged because queries
and keys get the same permutation.
"""

from __future__ import annotations

from collections.abc import Mapping

import einops
import torch
from torch import nn

__all__ = [
    "HAS_HOOKED_TRANSFORMER",
    "HookedTransformer",
    "TargetConfig",
    "build_model",
    "hooked_to_native",
    "load_weights",
    "model_config",
    "native_to_hooked",
]

try:  # TransformerLens 4 raises ImportError for the removed classes
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    HAS_HOOKED_TRANSFORMER = True
    TargetConfig = HookedTransformerConfig
except ImportError:
    from transformer_lens import TransformerBridgeConfig as TargetConfig
    HAS_HOOKED_TRANSFORMER = False
    HookedTransformerConfig = None

    class HookedTransformer:  # noqa: D101 - stands in for the class TransformerLens 4 removed
        """Placeholder on TransformerLens 4: every use says why it is missing."""

        @classmethod
        def from_pretrained_no_processing(cls, name: str, **kwargs):
            raise ImportError(f"loading {name!r} needs HookedTransformer, which TransformerLens 4 "
                              "removed: use TransformerBridge.boot_transformers, or install "
                              "transformer-lens>=3.9,<4")

# HookedTransformer buffers the native model recomputes from its config.
_HOOKED_BUFFERS = (".mask", ".IGNORE", ".rotary_sin", ".rotary_cos")


def model_config(**fields):
    """A ``HookedTransformerConfig`` (TL 3.x) or ``TransformerBridgeConfig`` (TL 4) with
    ``fields``; ``seed`` is set after construction, since passing it to HookedTransformerConfig
    reseeds the global RNGs."""
    seed = fields.pop("seed", None)
    cfg = TargetConfig(**fields)
    cfg.seed = seed
    return cfg


def build_model(cfg) -> nn.Module:
    """A freshly initialised model of ``cfg`` (from :func:`model_config`) in training mode."""
    if HAS_HOOKED_TRANSFORMER:
        return HookedTransformer(cfg)
    from transformer_lens.model_bridge import TransformerBridge

    model = TransformerBridge.boot_native(cfg)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.train()


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a state dict saved from either layout into ``model`` (strictly)."""
    hooked_saved = any(k.endswith(".W_E") for k in state_dict)
    hooked_model = HAS_HOOKED_TRANSFORMER and isinstance(model, HookedTransformer)
    if hooked_saved and not hooked_model:
        state_dict = hooked_to_native(state_dict, model.cfg)
    elif hooked_model and not hooked_saved:
        state_dict = native_to_hooked(state_dict, model.cfg)
        # HookedTransformer keeps its buffers in the state dict: take them from the model.
        own = model.state_dict()
        state_dict.update({k: own[k] for k in own if k.endswith(_HOOKED_BUFFERS)})
    model.load_state_dict(dict(state_dict))


# ----------------------------------------------------------------------------- conversion
def _rotary_order(cfg) -> torch.Tensor:
    """Native head dimension ``j`` holds HookedTransformer dimension ``order[j]``."""
    d_head = cfg.d_head
    if cfg.positional_embedding_type != "rotary":
        return torch.arange(d_head)
    rd = cfg.rotary_dim or d_head
    pairs = torch.stack([torch.arange(rd // 2), torch.arange(rd // 2) + rd // 2], -1).flatten()
    return torch.cat([pairs, torch.arange(rd, d_head)])


def _weight_rules(cfg, order: torch.Tensor):
    """``{HT suffix: (native suffix, HT -> native, native -> HT)}`` for one block."""
    inverse = order.argsort()

    def qk_w(t, idx):  # [h, d_model, d_head] <-> [(h d_head), d_model]
        return einops.rearrange(t[..., idx], "h i d -> (h d) i")

    def qk_w_back(t, idx, h):
        return einops.rearrange(t, "(h d) i -> h i d", h=h)[..., idx]

    heads, kv = cfg.n_heads, cfg.n_key_value_heads or cfg.n_heads
    ident = torch.arange(cfg.d_head)
    out = {}
    for ht, nat, idx, h in (("W_Q", "q", order, heads), ("W_K", "k", order, kv),
                            ("W_V", "v", ident, kv)):
        back_idx = inverse if idx is order else ident
        out[f"attn.{ht}"] = (f"attn.{nat}.weight", lambda t, i=idx: qk_w(t, i),
                                 lambda t, i=back_idx, h=h: qk_w_back(t, i, h))
        out[f"attn.b{ht[1:]}"] = (f"attn.{nat}.bias", lambda t, i=idx: t[..., i].flatten(),
                                      lambda t, i=back_idx, h=h: t.view(h, -1)[..., i])
    out["attn.W_O"] = ("attn.o.weight", lambda t: einops.rearrange(t, "h d o -> o (h d)"),
                           lambda t: einops.rearrange(t, "o (h d) -> h d o", h=heads))
    out["attn.b_O"] = ("attn.o.bias", lambda t: t, lambda t: t)
    for ht, nat in (("W_in", "in"), ("W_out", "out"), ("W_gate", "gate")):
        out[f"mlp.{ht}"] = (f"mlp.{nat}.weight", lambda t: t.T, lambda t: t.T)
        out[f"mlp.b{ht[1:]}"] = (f"mlp.{nat}.bias", lambda t: t, lambda t: t)
    for ln in ("ln1", "ln2"):
        out[f"{ln}.w"] = (f"{ln}.weight", lambda t: t, lambda t: t)
        out[f"{ln}.b"] = (f"{ln}.bias", lambda t: t, lambda t: t)
    return out


_TOP = {"embed.W_E": ("embed.weight", False), "pos_embed.W_pos": ("pos_embed.weight", False),
        "ln_final.w": ("ln_final.weight", False), "ln_final.b": ("ln_final.bias", False),
        "unembed.W_U": ("unembed.weight", True), "unembed.b_U": ("unembed.bias", False)}


def hooked_to_native(state_dict: Mapping[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """A HookedTransformer state dict in the native bridge's keys and layout."""
    rules = {ht: (nat, fwd) for ht, (nat, fwd, _) in _weight_rules(cfg, _rotary_order(cfg)).items()}
    return _move(state_dict, _TOP, rules, "a HookedTransformer to the bridge", skip=_HOOKED_BUFFERS)


def native_to_hooked(state_dict: Mapping[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """The inverse of :func:`hooked_to_native` (HookedTransformer buffers not included)."""
    rules = {nat: (ht, back) for ht, (nat, _, back) in _weight_rules(cfg, _rotary_order(cfg)).items()}
    top = {nat: (ht, transpose) for ht, (nat, transpose) in _TOP.items()}
    return _move(state_dict, top, rules, "a bridge to a HookedTransformer")


def _move(state_dict, top, rules, what: str, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Rename (and transpose / convert) every weight: ``top`` maps whole keys to
    ``(name, transpose)``, ``rules`` maps a block's key suffix to ``(name, convert)``."""
    out = {}
    for key, t in state_dict.items():
        if skip and key.endswith(skip):
            continue
        if key in top:
            name, transpose = top[key]
            out[name] = t.T.contiguous() if transpose else t
            continue
        prefix, _, rest = key.partition(".")
        layer, _, suffix = rest.partition(".")
        if prefix != "blocks" or suffix not in rules:
            raise ValueError(f"cannot move weight {key!r} of {what}")
        name, convert = rules[suffix]
        out[f"blocks.{layer}.{name}"] = convert(t).contiguous()
    return out
