"""HookedTransformer backend (TransformerLens 3.x).

Hook map (``L`` is the layer):

======== ============================================ =============================================
site     input captured at                            output replaced at
======== ============================================ =============================================
W_Q/K/V  kwargs of ``blocks.L.attn`` (forward pre-hook) ``blocks.L.attn.hook_q/k/v``
W_O      ``blocks.L.attn.hook_z``                     output of ``blocks.L.attn`` (forward hook)
W_gate   ``args[0]`` of ``blocks.L.mlp`` (pre-hook)     ``blocks.L.mlp.hook_pre``
W_in     ``args[0]`` of ``blocks.L.mlp`` (pre-hook)     ``hook_pre`` (plain) / ``hook_pre_linear`` (gated)
W_out    ``blocks.L.mlp.hook_post``                   output of ``blocks.L.mlp`` (forward hook)
======== ============================================ =============================================

Capturing the attention and MLP modules' own arguments gives each matrix its *true* input in
every configuration: after the norm's affine map (TL 3 fires ``ln*.hook_normalized`` before it),
with the shortformer positional embedding added to Q/K only, and per head for split-QKV models.
Replacing the module outputs (not ``hook_attn_out``/``hook_mlp_out``) stays correct for
sandwich/post-norm models, which normalise before those hooks.
"""

from __future__ import annotations

import einops
import torch
from torch import nn

from tl_vpd._typing import Float
from tl_vpd.backends.base import Backend, HookSession
from tl_vpd.sites import Site

__all__ = ["HookedTransformerBackend"]

_QKV = {"W_Q": ("query_input", "hook_q"), "W_K": ("key_input", "hook_k"), "W_V": ("value_input", "hook_v")}

# HookedTransformer's weight layout, in one place: the axes of the parameter holding each kind of
# matrix and of the site's ``[d_out, d_in]`` view of it (einops patterns; h = heads).
_LAYOUT = {
    "W_Q": ("h i d", "(h d) i"), "W_K": ("h i d", "(h d) i"), "W_V": ("h i d", "(h d) i"),
    "W_O": ("h d o", "o (h d)"),
    "W_in": ("i o", "o i"), "W_gate": ("i o", "o i"), "W_out": ("i o", "o i"),
}


def _param(model: nn.Module, layer: int, kind: str) -> nn.Parameter:
    """The parameter that holds a ``kind`` matrix of block ``layer`` (``_W_K``/``_W_V`` under
    grouped-query attention: the un-expanded weights the forward reads)."""
    block = model.blocks[layer]
    if kind in ("W_Q", "W_K", "W_V", "W_O"):
        attn = block.attn
        private = "_" + kind
        return getattr(attn, private if kind in ("W_K", "W_V") and hasattr(attn, private) else kind)
    if kind in ("W_in", "W_gate", "W_out"):
        return getattr(block.mlp, kind)
    raise NotImplementedError(f"the HookedTransformer backend does not know where a {kind!r} "
                              "matrix lives")


def _site_view(param: torch.Tensor, kind: str) -> torch.Tensor:
    """``param`` as the site's ``[d_out, d_in]`` matrix."""
    src, dst = _LAYOUT[kind]
    return einops.rearrange(param.detach(), f"{src} -> {dst}")


def _param_view(weight: torch.Tensor, kind: str, n_heads: int | None) -> torch.Tensor:
    """A site-oriented ``[d_out, d_in]`` matrix in the parameter's layout (inverse of
    :func:`_site_view`)."""
    src, dst = _LAYOUT[kind]
    sizes = {"h": n_heads} if "h" in src else {}
    return einops.rearrange(weight, f"{dst} -> {src}", **sizes)


def _hooked_transformer_class():
    try:
        from transformer_lens import HookedTransformer
    except ImportError as e:  # TransformerLens 4 removed it
        raise ImportError(
            "this TransformerLens has no HookedTransformer (4.x removed it); load the model as a "
            "TransformerBridge and use the bridge backend, or install transformer-lens>=3.9,<4"
        ) from e
    return HookedTransformer


class HookedTransformerBackend(Backend):
    name = "hooked_transformer"
    language_model = True
    supports_edit = True
    supports_hooked_view = True
    supports_attribution = True

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        # HookedTransformer or a user subclass of it. The name test comes first so that other
        # models never import transformer_lens (nor hit the TL 4 ImportError).
        if not any(c.__name__ == "HookedTransformer" for c in type(model).__mro__):
            return False
        return isinstance(model, _hooked_transformer_class())

    # ------------------------------------------------------------------ sites
    def find_sites(self, model: nn.Module) -> list[Site]:
        cfg = model.cfg
        self._refuse_unsupported(cfg)
        sites: list[Site] = []
        for L, block in enumerate(model.blocks):
            sites += self._attn_sites(L, block.attn, cfg)
            if not cfg.attn_only:
                sites += self._mlp_sites(L, block.mlp, cfg)
        return sites

    @staticmethod
    def _refuse_unsupported(cfg) -> None:
        problems = []
        if getattr(cfg, "use_attn_result", False):
            problems.append(
                "use_attn_result=True (hook_result would hold stale, unmasked per-head results)"
            )
        if getattr(cfg, "ungroup_grouped_query_attention", False):
            problems.append("ungroup_grouped_query_attention=True (K/V use the expanded weights)")
        if getattr(cfg, "num_experts", None):
            problems.append("mixture-of-experts MLPs (per-expert weights are not sites yet)")
        if getattr(cfg, "load_in_4bit", False):
            problems.append("load_in_4bit (quantised weights cannot be decomposed)")
        if cfg.gated_mlp and not cfg.attn_only and cfg.act_fn is not None and cfg.act_fn.endswith("_ln"):
            problems.append(f"gated MLP with act_fn={cfg.act_fn!r} (TL skips W_in on that path)")
        if problems:
            raise ValueError(
                "this HookedTransformer configuration is not supported by tl_vpd: "
                + "; ".join(problems)
            )

    @staticmethod
    def _attn_sites(L: int, attn: nn.Module, cfg) -> list[Site]:
        per_head = bool(cfg.use_split_qkv_input or cfg.use_attn_in)
        gqa = hasattr(attn, "_W_K")
        out = []
        for kind in ("W_Q", "W_K", "W_V"):
            wname, bname = kind, "b" + kind[1:]
            if gqa and kind != "W_Q":
                wname, bname = "_" + wname, "_" + bname
            w = getattr(attn, wname)
            n_heads, d_in, d_head = w.shape

            def get_w(attn=attn, wname=wname, kind=kind):
                return _site_view(getattr(attn, wname), kind)

            def get_b(attn=attn, bname=bname):
                return getattr(attn, bname).detach().reshape(-1)

            out.append(
                Site(f"blocks.{L}.attn.{kind}", d_in, n_heads * d_head, get_w, get_b,
                     n_heads=n_heads, per_head_input=per_head, layer=L, kind=kind)
            )
        n_heads, d_head, d_model = attn.W_O.shape
        out.append(
            Site(f"blocks.{L}.attn.W_O", n_heads * d_head, d_model,
                 lambda attn=attn: _site_view(attn.W_O, "W_O"),
                 lambda attn=attn: attn.b_O.detach(),
                 n_heads=n_heads, layer=L, kind="W_O")
        )
        return out

    @staticmethod
    def _mlp_sites(L: int, mlp: nn.Module, cfg) -> list[Site]:
        d_model, d_mlp = mlp.W_in.shape
        gated = hasattr(mlp, "W_gate")
        out = []
        if gated:
            out.append(Site(f"blocks.{L}.mlp.W_gate", d_model, d_mlp,
                            lambda mlp=mlp: _site_view(mlp.W_gate, "W_gate"), lambda: None,
                            layer=L, kind="W_gate"))
        # Gated MLPs add b_in after act(gate) * linear, outside W_in's output.
        out.append(Site(f"blocks.{L}.mlp.W_in", d_model, d_mlp,
                        lambda mlp=mlp: _site_view(mlp.W_in, "W_in"),
                        (lambda: None) if gated else (lambda mlp=mlp: mlp.b_in.detach()),
                        layer=L, kind="W_in"))
        out.append(Site(f"blocks.{L}.mlp.W_out", d_mlp, d_model,
                        lambda mlp=mlp: _site_view(mlp.W_out, "W_out"), lambda mlp=mlp: mlp.b_out.detach(),
                        layer=L, kind="W_out"))
        return out

    def add_to_weight(self, model: nn.Module, site: Site,
                      delta: Float[torch.Tensor, "d_out d_in"]) -> None:
        param = _param(model, site.layer, site.kind)
        n_heads = param.shape[0] if site.kind in ("W_Q", "W_K", "W_V", "W_O") else None
        with torch.no_grad():
            param.add_(_param_view(delta, site.kind, n_heads).to(param.dtype))

    def embedding_points(self, model: nn.Module) -> list[nn.Module]:
        return [model.hook_embed] + ([model.hook_pos_embed] if hasattr(model, "hook_pos_embed") else [])

    def apply_rotary(self, model: nn.Module, layer: int, x: torch.Tensor) -> torch.Tensor:
        return model.blocks[layer].attn.apply_rotary(x)

    # ------------------------------------------------------------------ hooks
    def _install(self, model: nn.Module, session: HookSession) -> list:
        # TL's run_with_hooks calls model.forward() directly, bypassing the root module's hooks:
        # bracket the pass at the embedding and the unembedding too, so it is checked as well.
        handles = [model.embed.register_forward_pre_hook(lambda *_: session.begin()),
                   model.unembed.register_forward_hook(lambda *_: session.end())]
        by_layer: dict[int, dict[str, Site]] = {}
        for s in session.sites.values():
            by_layer.setdefault(s.layer, {})[s.kind] = s
        gated = model.cfg.gated_mlp
        for L, kinds in by_layer.items():
            block = model.blocks[L]
            attn_in = [(kinds[k], arg) for k, (arg, _) in _QKV.items() if k in kinds]
            if attn_in:
                handles.append(block.attn.register_forward_pre_hook(
                    _kwargs_capture(session, attn_in), with_kwargs=True))
                for site, _ in attn_in:
                    hp = getattr(block.attn, _QKV[site.kind][1])
                    handles.append(hp.register_forward_hook(_head_replace(session, site)))
            if "W_O" in kinds:
                site = kinds["W_O"]
                handles.append(block.attn.hook_z.register_forward_hook(_capture(session, site, True)))
                handles.append(block.attn.register_forward_hook(_replace(session, site)))
            mlp_in = [kinds[k] for k in ("W_gate", "W_in") if k in kinds]
            if mlp_in:
                handles.append(block.mlp.register_forward_pre_hook(_args_capture(session, mlp_in)))
                for site in mlp_in:
                    hp_name = "hook_pre_linear" if (gated and site.kind == "W_in") else "hook_pre"
                    handles.append(getattr(block.mlp, hp_name).register_forward_hook(
                        _replace(session, site)))
            if "W_out" in kinds:
                site = kinds["W_out"]
                handles.append(block.mlp.hook_post.register_forward_hook(_capture(session, site)))
                handles.append(block.mlp.register_forward_hook(_replace(session, site)))
        return handles


def _kwargs_capture(session: HookSession, pairs):
    def hook(module, args, kwargs):
        for site, arg in pairs:
            if arg not in kwargs:
                raise RuntimeError(f"site {site.name}: attention was called without {arg}=")
            session.capture(site.name, kwargs[arg])
    return hook


def _args_capture(session: HookSession, sites):
    def hook(module, args):
        for site in sites:
            session.capture(site.name, args[0])
    return hook


def _capture(session: HookSession, site: Site, flatten_heads: bool = False):
    """Capture a hook point's value; ``hook_z``'s ``[..., h, d_head]`` becomes ``[..., h*d_head]``."""
    def hook(module, args, output):
        session.capture(site.name, output.flatten(-2) if flatten_heads else output)
    return hook


def _replace(session: HookSession, site: Site):
    def hook(module, args, output):
        return session.replace(site.name, output)
    return hook


def _head_replace(session: HookSession, site: Site):
    """Replace ``hook_q/k/v`` (``[..., h, d_head]``), presenting ``[..., h*d_head]`` to the core
    unless the site's input is itself per head."""
    def hook(module, args, output):
        if site.per_head_input:
            return session.replace(site.name, output)
        return session.replace(site.name, output.flatten(-2)).unflatten(-1, output.shape[-2:])
    return hook
