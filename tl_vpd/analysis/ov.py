"""What value and output subcomponents write: the OV circuit of one attention layer.

VPD paper, "Previous token behavior employs non-overlapping subspaces in the OV circuit": head
``h`` moves ``W^h_OV = W^h_O W^h_V`` of what it attends to into the residual stream. A value
subcomponent ``c`` reads ``V_V,c`` and writes ``U^h_V,c`` into head ``h``'s value space, so
through that head it adds (per unit of attention)

    write[c, h] = s_c ‖V_V,c‖ · W^h_O U^h_V,c                     [d_model]

(``s_c`` the sign of its mean activation where it fires, as the static Q·K strength uses; the
scale ``‖V_V,c‖`` puts subcomponents on one footing, as there). Composed with the output
subcomponents ``W_O = Σ_o U_O,o V_O,oᵀ (+ Δ)`` it is a sum of rank-1 maps, one per pair, of gain

    pair[c, o, h] = s_c ‖V_V,c‖ (V^h_O,o · U^h_V,c) ‖U_O,o‖

(the paper's read/write alignment of V and O subcomponents with a head's OV circuit, per pair).
Its direct effect on the logits is ``write · W_U``: the tokens it promotes and suppresses,
exact for the last layer of an attention-only model without a final norm, else the direct path
only. The tokens
it reads are ``s_c W_E · V_V,c`` (exact in layer 0 without norms), so a copying subcomponent
reads and promotes the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tl_vpd._typing import Float
from tl_vpd.analysis._tokens import fmt_token, token_decoder
from tl_vpd.analysis.subcomponents import harvest
from tl_vpd.tables import html_table, text_table

if TYPE_CHECKING:
    from tl_vpd.decomposition import Decomposition

__all__ = ["OVCircuits", "ov_circuits"]


@dataclass
class OVCircuits:
    """The OV circuit of every value subcomponent of one layer (see the module).

    Attributes:
        layer: the attention layer.
        write: ``[C_v, head, d_model]`` what value subcomponent ``c`` writes through each head
            per unit of attention (the target's ``W_O``).
        pair: ``[C_v, C_o, head]`` gain of each (value, output) subcomponent pair, or ``None``
            when ``W_O`` is not decomposed.
        sign: ``[C_v]`` the value subcomponents' signs (+1 without data).
        exact: whether ``write · W_U`` is the whole effect on the logits (last layer, no final
            norm) rather than the direct path.
    """

    layer: int
    write: Float[torch.Tensor, "C_v head d_model"]
    pair: Float[torch.Tensor, "C_v C_o head"] | None
    sign: Float[torch.Tensor, " C_v"]
    exact: bool
    _read_dirs: Float[torch.Tensor, "C_v d_model"]
    _W_E: Float[torch.Tensor, "d_vocab d_model"]
    _W_U: Float[torch.Tensor, "d_model d_vocab"]
    _to_str: Callable[[int], str]

    def head_share(self, c: int) -> Float[torch.Tensor, " head"]:
        """Share of ``‖write[c, h]‖`` in each head."""
        n = self.write[c].norm(dim=-1)
        return n / n.sum().clamp_min(1e-30)

    def logit_effect(self, c: int, head: int | None = None) -> Float[torch.Tensor, " d_vocab"]:
        """``write[c] · W_U``, through one head or summed over heads."""
        w = self.write[c].sum(0) if head is None else self.write[c, head]
        return w @ self._W_U

    def _top(self, scores: torch.Tensor, n: int) -> list[tuple[str, float]]:
        idx = scores.topk(min(n, scores.numel())).indices
        return [(self._to_str(i), float(scores[i])) for i in idx]

    def promotes(self, c: int, n: int = 8, head: int | None = None) -> list[tuple[str, float]]:
        """The ``n`` tokens whose logits ``c`` raises most: ``(token, logit change)``."""
        return self._top(self.logit_effect(c, head), n)

    def suppresses(self, c: int, n: int = 8, head: int | None = None) -> list[tuple[str, float]]:
        """The ``n`` tokens whose logits ``c`` lowers most: ``(token, logit change)``."""
        return [(t, -s) for t, s in self._top(-self.logit_effect(c, head), n)]

    def reads(self, c: int, n: int = 8) -> list[tuple[str, float]]:
        """The ``n`` tokens whose embeddings activate ``c`` most (``s_c W_E · V_V,c``)."""
        return self._top(self._W_E @ self._read_dirs[c], n)

    def top_outputs(self, c: int, n: int = 3) -> list[tuple[int, int, float]]:
        """The output subcomponents ``c`` composes with most: ``(o, head, gain)``."""
        if self.pair is None:
            return []
        p = self.pair[c]
        order = p.abs().flatten().argsort(descending=True)[:n].tolist()
        return [(i // p.shape[1], i % p.shape[1], float(p.flatten()[i])) for i in order]

    def ranked(self) -> list[int]:
        """Value subcomponents by ``‖write‖`` summed over heads, largest first."""
        return self.write.norm(dim=-1).sum(-1).argsort(descending=True).tolist()

    def _rows(self, n: int, n_tokens: int) -> list[dict]:
        def toks(pairs):
            return " ".join(repr(fmt_token(t)) for t, _ in pairs)

        rows = []
        for c in self.ranked()[:n]:
            share = self.head_share(c)
            h = int(share.argmax())
            outs = self.top_outputs(c, 1)
            rows.append({"v": f"W_V:{c}", "head": f"H{h} ({share[h]:.2f})",
                         "norm": float(self.write[c].norm(dim=-1).sum()),
                         "reads": toks(self.reads(c, n_tokens)),
                         "promotes": toks(self.promotes(c, n_tokens)),
                         "suppresses": toks(self.suppresses(c, n_tokens)),
                         "via": f"W_O:{outs[0][0]} H{outs[0][1]} {outs[0][2]:+.2f}" if outs else None})
        return rows

    _COLS = [("v", "value"), ("head", "top head"), ("norm", "‖write‖"), ("reads", "reads"),
             ("promotes", "promotes"), ("suppresses", "suppresses"), ("via", "top output pair")]

    def table(self, n: int = 10, n_tokens: int = 4) -> str:
        """The ``n`` value subcomponents that write most, as a text table."""
        return text_table(self._COLS, self._rows(n, n_tokens), _fmt)

    def _header(self) -> str:
        C, H, _ = self.write.shape
        path = "exact" if self.exact else "direct path only"
        outs = "" if self.pair is None else f" × W_O C={self.pair.shape[1]}"
        return f"OVCircuits(layer {self.layer}, W_V C={C}{outs}, {H} heads; logits via W_U, {path})"

    def __repr__(self) -> str:
        return self._header() + "\n" + "\n".join("  " + s for s in self.table(6).splitlines())

    def _repr_html_(self) -> str:
        return f"<p>{self._header()}</p>" + html_table(self._COLS, self._rows(10, 4), _fmt)


def _fmt(key: str, v) -> str:
    return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


@torch.no_grad()
def ov_circuits(dec: Decomposition, layer: int, *, data=None, signs=None,
                decode: Callable | None = None) -> OVCircuits:
    """The OV circuit of every value subcomponent of ``layer``, composed with the output
    subcomponents where ``W_O`` is decomposed.

    Arguments:
        dec: decomposition with ``blocks.{layer}.attn.W_V`` decomposed.
        data: tokens to estimate each value subcomponent's sign from (mean activation where it
            fires), as for the static Q·K strength.
        signs: ``[C_v]`` signs given directly instead.
        decode: ``decode([id]) -> str`` for token labels (default: the model's tokenizer).
    """
    model = dec.model
    if not dec.backend.language_model or not (hasattr(model, "W_U") and hasattr(model, "W_E")):
        raise NotImplementedError(f"ov_circuits needs a language model with W_E and W_U; this "
                                  f"decomposition's backend is {dec.backend.name!r}")
    vs = dec.site(f"blocks.{layer}.attn.W_V").name
    o_name = f"blocks.{layer}.attn.W_O"
    o_site = next((s for s in dec.backend.find_sites(model) if s.name == o_name), None)
    if o_site is None:
        raise NotImplementedError(f"the {dec.backend.name} backend exposes no {o_name}")
    cv = dec.components[vs]
    Hk, H = dec.site(vs).n_heads, o_site.n_heads
    if signs is None and data is not None:
        signs = harvest(dec, data, sites=[vs], top_k=1, progress=False).sign[vs]
    sign = torch.ones(cv.C) if signs is None else torch.as_tensor(signs, dtype=torch.float32)
    U = cv.U.detach().double().view(Hk, -1, cv.C).repeat_interleave(H // Hk, dim=0)  # [H, d, C_v]
    scale = cv.V.detach().double().norm(dim=1).cpu() * sign.double()  # s_c ‖V_V,c‖
    U = U * scale.to(U.device)
    W_O = o_site.weight.detach().double().view(-1, H, U.shape[1])  # [d_model, H, d_head]
    write = torch.einsum("mhd,hdc->chm", W_O, U.to(W_O.device))
    pair = None
    if o_name in dec.sites:
        co = dec.components[o_name]
        Vo = co.V.detach().double().view(co.C, H, -1)  # [C_o, H, d_head]
        pair = torch.einsum("ohd,hdc->coh", Vo, U.to(Vo.device)) * co.U.detach().double().norm(dim=0)[None, :, None]
    V_dir = cv.V.detach().double() * sign.double().to(cv.V.device)[:, None]
    # exact only where nothing (an MLP, a later layer, a final norm) sits between it and W_U
    exact = (layer == model.cfg.n_layers - 1 and getattr(model.cfg, "attn_only", False)
             and getattr(model.cfg, "normalization_type", None) is None)
    return OVCircuits(layer, write.float().cpu(), None if pair is None else pair.float().cpu(),
                      sign.float(), exact,
                      V_dir.float().cpu(), model.W_E.detach().float().cpu(),
                      model.W_U.detach().float().cpu(), token_decoder(model, decode))
