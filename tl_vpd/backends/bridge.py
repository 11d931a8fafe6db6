"""TransformerBridge backend (TransformerLens ≥ 3.9, including 4.x, which has only the bridge).

Every projection of a bridge is a ``LinearBridge`` (``attn.q/k/v/o``, ``mlp.gate/in/out``) that
wraps the real module (``nn.Linear``, or HF ``Conv1D`` whose weight is stored ``[in, out]``) and
fires its own ``hook_in`` / ``hook_out``. Hook map (``L`` is the layer; canonical names, never the
aliases such as ``attn.hook_q``, which are the same hook point and would run the swap twice):

========= ============================================ ==================================
site      input captured at                            output replaced at
========= ============================================ ==================================
W_Q/K/V   ``blocks.L.attn.q/k/v.hook_in``              ``blocks.L.attn.q/k/v.hook_out``
W_O       ``blocks.L.attn.o.hook_in``                  ``blocks.L.attn.o.hook_out``
W_gate    ``blocks.L.mlp.hook_in``                     ``blocks.L.mlp.gate.hook_out``
W_in      ``blocks.L.mlp.in.hook_in`` (gated: as gate) ``blocks.L.mlp.in.hook_out``
W_out     ``blocks.L.mlp.out.hook_in``                 ``blocks.L.mlp.out.hook_out``
========= ============================================ ==================================

The hooks are plain torch hooks on those hook points (handles kept and removed, untouched by
``reset_hooks()``), so they see the tensors the projections really read and return, before any
TL-level shape conversion. Facts this relies on (read from the TransformerLens source;
``tests/test_bridge.py`` re-checks them on TL 3.9 and 4.x):

* GPT-2's fused ``c_attn`` (and GPT-NeoX's ``query_key_value``) is split into three
  ``nn.Linear`` at boot; those are what the forward runs, so they are the decomposed Q/K/V.
* In compatibility mode (``enable_compatibility_mode()``) a gated MLP runs a functional path that
  fires ``gate/in.hook_out`` but not their ``hook_in``: the gate/in input is read at
  ``mlp.hook_in``, the same tensor in both modes. On TL 3.9 that path multiplies by private
  processed copies (``mlp._processed_W_gate`` ...), so those are the sites' weights there.
* ``use_attn_result`` skips ``o.hook_out`` and ``use_split_qkv_input`` / ``use_attn_in`` skip
  ``q/k/v.hook_in``: refused, and the per-forward exactly-once check catches anything similar.

Analysis (``tl_vpd.analysis``): weights are written through the sites' own views of them (the
tensors the forward multiplies by, see above), so an edit lands where a mask would act; the
embeddings are ``embed.hook_out`` / ``pos_embed.hook_out``; rotary is the model's own, read from
its native rotary module or from the cos/sin tables its attention receives (``hook_cos`` /
``hook_sin``, Hugging Face's half-split pairing).

Only the attention and MLP bridge classes listed in ``_ATTENTION`` / ``_MLP`` are accepted: their
forwards were verified to run each projection exactly as ``x @ W.T + b``. Another class raises
with its name rather than risk a swap that is silently wrong.
"""

from __future__ import annotations

import torch
from torch import nn

from tl_vpd._typing import Float
from tl_vpd.backends.base import Backend, HookSession
from tl_vpd.sites import Site

__all__ = ["BridgeBackend"]

# Attention / MLP bridge classes whose projections run as plain linear maps between their hooks.
_ATTENTION = frozenset({
    "AttentionBridge",  # boot_native
    "JointQKVAttentionBridge",  # GPT-2 (fused c_attn, split at boot)
    "JointQKVPositionEmbeddingsAttentionBridge",  # GPT-NeoX / Pythia
    "PositionEmbeddingsAttentionBridge",  # LLaMA, Qwen2, Gemma, Mistral, ...
})
_MLP = frozenset({"MLPBridge", "GatedMLPBridge"})
_REFUSED_FLAGS = {
    "use_attn_result": "attn.o.hook_out never fires, so W_O's masks would be ignored",
    "use_split_qkv_input": "attn.q/k/v.hook_in never fire, so Q/K/V's masks would be ignored",
    "use_attn_in": "attn.q/k/v.hook_in never fire, so Q/K/V's masks would be ignored",
}
_ATTN_KINDS = {"W_Q": "q", "W_K": "k", "W_V": "v", "W_O": "o"}
_MLP_KINDS = {"W_gate": "gate", "W_in": "in", "W_out": "out"}


def _is_bridge(model: nn.Module) -> bool:
    if not any(c.__name__ == "TransformerBridge" for c in type(model).__mro__):
        return False  # cheap test first: importing the bridge is slow and may fail on old TL
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return False
    return isinstance(model, TransformerBridge)


class BridgeBackend(Backend):
    name = "transformer_bridge"
    language_model = True
    supports_edit = True
    supports_hooked_view = True
    supports_attribution = True

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        return _is_bridge(model)

    # ------------------------------------------------------------------ sites
    def find_sites(self, model: nn.Module) -> list[Site]:
        _refuse_unsupported(model)
        cfg = model.cfg
        n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        heads = {"W_Q": cfg.n_heads, "W_K": n_kv, "W_V": n_kv, "W_O": cfg.n_heads}
        sites: list[Site] = []
        for L, block in enumerate(model.blocks):
            attn, mlp = block._modules.get("attn"), block._modules.get("mlp")
            if attn is not None:
                for kind, sub in _ATTN_KINDS.items():
                    sites.append(_site(L, "attn", kind, _projection(attn, sub, L), None,
                                       n_heads=heads[kind]))
            if mlp is not None:
                gated = _is_gated(mlp)
                for kind, sub in _MLP_KINDS.items():
                    if kind == "W_gate" and not gated:
                        continue
                    sites.append(_site(L, "mlp", kind, _projection(mlp, sub, L),
                                       mlp if gated else None))
        return sites

    # ------------------------------------------------------------------ analysis
    def add_to_weight(self, model: nn.Module, site: Site,
                      delta: Float[torch.Tensor, "d_out d_in"]) -> None:
        # The site's weight is a view of the tensor the forward uses (Conv1D: transposed), so
        # adding in place writes the model's parameter in its own layout.
        weight = {s.name: s for s in self.find_sites(model)}[site.name].weight
        with torch.no_grad():
            weight.add_(delta.to(weight.dtype))

    def embedding_points(self, model: nn.Module) -> list[nn.Module]:
        return [model.hook_dict[n] for n in ("embed.hook_out", "pos_embed.hook_out")
                if n in model.hook_dict]

    def apply_rotary(self, model: nn.Module, layer: int, x: torch.Tensor) -> torch.Tensor:
        attn = model.blocks[layer].attn
        native = getattr(attn.original_component, "rotary", None)
        if native is not None and hasattr(native, "apply_rope"):  # boot_native: [b, h, pos, d]
            rotated, _ = native.apply_rope(x.transpose(1, 2), x.transpose(1, 2))
            return rotated.transpose(1, 2)
        names = [f"blocks.{layer}.attn.hook_cos", f"blocks.{layer}.attn.hook_sin"]
        if not all(n in model.hook_dict for n in names):
            raise NotImplementedError(f"blocks.{layer}: this {type(attn).__name__} has no rotary "
                                      "tables tl_vpd can read")
        probe = torch.zeros(1, x.shape[1], dtype=torch.long, device=x.device)
        with torch.no_grad():
            _, cache = model.run_with_cache(probe, names_filter=names)
        cos, sin = (cache[n][0, :, None].to(x.dtype) for n in names)  # [pos, 1, rotary_dim]
        rd = cos.shape[-1]
        rot, rest = x[..., :rd], x[..., rd:]
        half = torch.cat([-rot[..., rd // 2:], rot[..., : rd // 2]], dim=-1)
        return torch.cat([rot * cos + half * sin, rest], dim=-1)

    # ------------------------------------------------------------------ hooks
    def _install(self, model: nn.Module, session: HookSession) -> list:
        _refuse_unsupported(model)  # flags may have been switched on after find_sites
        handles = []
        for site in session.sites.values():
            block = model.blocks[site.layer]
            if site.kind in _ATTN_KINDS:
                parent, sub = block.attn, _ATTN_KINDS[site.kind]
            else:
                parent, sub = block.mlp, _MLP_KINDS[site.kind]
            proj = _projection(parent, sub, site.layer)
            # A gated MLP's compatibility path skips gate/in.hook_in: read at mlp.hook_in.
            capture_at = parent.hook_in if site.kind in ("W_gate", "W_in") and _is_gated(parent) \
                else proj.hook_in
            handles.append(capture_at.register_forward_hook(_capture(session, site)))
            handles.append(proj.hook_out.register_forward_hook(_replace(session, site)))
        return handles


# ---------------------------------------------------------------------- helpers
def _refuse_unsupported(model: nn.Module) -> None:
    if not isinstance(getattr(model, "blocks", None), nn.ModuleList):
        raise ValueError(f"this {type(model).__name__} has no decoder `blocks`; tl_vpd decomposes "
                         "the attention and MLP matrices of decoder blocks")
    problems = []
    configs = [model.cfg] + [getattr(b.attn, "config", None) for b in model.blocks
                             if b._modules.get("attn") is not None]
    for flag, why in _REFUSED_FLAGS.items():
        if any(bool(getattr(c, flag, False)) for c in configs if c is not None):
            problems.append(f"{flag}=True ({why})")
    for L, block in enumerate(model.blocks):
        for part, allowed in (("attn", _ATTENTION), ("mlp", _MLP)):
            mod = block._modules.get(part)
            if mod is not None and type(mod).__name__ not in allowed:
                problems.append(f"blocks.{L}.{part} is a {type(mod).__name__} (supported: "
                                f"{', '.join(sorted(allowed))})")
    if problems:
        raise ValueError(
            "this TransformerBridge is not supported by tl_vpd: " + "; ".join(problems)
            + ". Switch the flags off (e.g. model.set_use_attn_result(False)); other "
            "architectures need their forward checked before tl_vpd can hook them."
        )


def _is_gated(mlp: nn.Module) -> bool:
    return type(mlp).__name__ == "GatedMLPBridge"


def _projection(parent: nn.Module, sub: str, layer: int) -> nn.Module:
    proj = parent._modules.get(sub)
    if proj is None or not hasattr(proj, "hook_in") or not hasattr(proj, "hook_out"):
        raise ValueError(f"blocks.{layer}: the {type(parent).__name__} has no hooked projection "
                         f"{sub!r}; tl_vpd needs each matrix as its own LinearBridge")
    inner = proj.original_component
    if not (isinstance(inner, nn.Linear) or _is_conv1d(inner)):
        raise ValueError(f"blocks.{layer}: projection {sub!r} wraps a {type(inner).__name__}; "
                         "tl_vpd decomposes nn.Linear and HF Conv1D weights only")
    if not inner.weight.is_floating_point():
        raise ValueError(f"blocks.{layer}: projection {sub!r} has {inner.weight.dtype} weights; "
                         "quantised weights cannot be decomposed")
    return proj


def _is_conv1d(module: nn.Module) -> bool:
    """HF ``Conv1D`` (GPT-2): ``y = x @ weight + bias`` with ``weight [in, out]``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _site(L: int, part: str, kind: str, proj: nn.Module, gated_mlp: nn.Module | None,
          n_heads: int | None = None) -> Site:
    """The site of one projection.

    ``gated_mlp`` is the projection's gated MLP: in compatibility mode TL 3.9 runs it on private
    processed copies (``_processed_W_gate`` ...), TL 4 on the projections' own weights. Which one
    is decided at every read, so the weight is always the one the forward uses now.
    """
    key = _MLP_KINDS.get(kind)

    def private_copies() -> bool:
        return (gated_mlp is not None and bool(getattr(gated_mlp, "_use_processed_weights", False))
                and hasattr(gated_mlp, f"_processed_W_{key}"))

    def get_weight() -> torch.Tensor:
        if private_copies():
            return getattr(gated_mlp, f"_processed_W_{key}").detach()
        inner = proj.original_component
        return inner.weight.detach().T if _is_conv1d(inner) else inner.weight.detach()

    def get_bias() -> torch.Tensor | None:
        b = getattr(gated_mlp, f"_processed_b_{key}") if private_copies() \
            else proj.original_component.bias
        return None if b is None else b.detach()

    d_out, d_in = get_weight().shape
    return Site(f"blocks.{L}.{part}.{kind}", d_in, d_out, get_weight, get_bias,
                n_heads=n_heads, layer=L, kind=kind)


def _capture(session: HookSession, site: Site):
    """Capture a ``hook_in``; a per-head ``[..., h, d_head]`` input becomes ``[..., d_in]``."""
    def hook(module, args, x):
        if x.shape[-1] != site.d_in and x.ndim >= 2 and x.shape[-2] * x.shape[-1] == site.d_in:
            x = x.flatten(-2)
        session.capture(site.name, x)
    return hook


def _replace(session: HookSession, site: Site):
    """Replace a ``hook_out``; the core sees ``[..., d_out]`` whether the bridge presents Q/K/V
    as ``[..., d_out]`` or per head as ``[..., h, d_head]``."""
    def hook(module, args, out):
        if out.shape[-1] == site.d_out:
            return session.replace(site.name, out)
        return session.replace(site.name, out.flatten(-2)).unflatten(-1, out.shape[-2:])
    return hook
