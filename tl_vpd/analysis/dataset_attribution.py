"""Dataset-aggregated attributions between subcomponents (VPD paper, appendix "Gradient
attributions", dataset-aggregated attributions).

With the direct-effect gradient of :mod:`tl_vpd.analysis.attribution` (stop-gradients on every
other subcomponent), the summed attribution of source ``c1`` (site ``l1``) to target ``c2``
(site ``l2``) over a dataset is

    A(c1 → c2) = Σ_b Σ_{t1, t2} ∂a2[b, t2] / ∂a1[b, t1] · a1[b, t1] · g1[b, t1],

over the valid position pairs (``t1 = t2`` for position-wise paths, ``t1 ≤ t2`` for key/value
to output inside attention: the causal mask gives the others zero gradient). One backward pass
of ``Σ_{b,t2} a2[b, t2]`` per target subcomponent yields every source at once. The paper's
normalisation divides by the source's total causal importance and the target's RMS activation,

    Â(c1 → c2) = A(c1 → c2) / ((Σ_{b,t1} g1[b, t1]) · RMS(a2)),   RMS(a2) = sqrt(mean_{b,t} a2²).

``absolute=True`` is the paper's ``A_abs`` variant: ``|a2|`` in place of ``a2`` in the backward.
Activations are ``a = v_c · φ`` (no ``‖u‖`` factor), as in the prompt graphs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from tl_vpd.analysis._tokens import iter_token_batches
from tl_vpd.analysis.attribution import leaf_forward
from tl_vpd.tables import text_table

if TYPE_CHECKING:
    from tl_vpd.decomposition import Decomposition

__all__ = ["DatasetAttributions", "dataset_attributions"]


class DatasetAttributions:
    """Normalised dataset attributions ``Â`` between every pair of sites.

    Attributes:
        sites: site names in forward order.
        raw: ``{(source_site, target_site): [C_src, C_tgt]}`` the sums ``A``.
        ci_sum: ``{site: [C]}`` total causal importance; ``rms``: ``{site: [C]}`` RMS activation.
        n_tokens: tokens seen; ``absolute``: whether this is ``A_abs``.
    """

    def __init__(self, sites, raw, ci_sum, rms, n_tokens: int, absolute: bool):
        self.sites, self.raw, self.ci_sum, self.rms = list(sites), raw, ci_sum, rms
        self.n_tokens, self.absolute = n_tokens, absolute

    def normalized(self, source: str, target: str) -> torch.Tensor:
        """``Â`` from ``source``'s subcomponents (rows) to ``target``'s (columns); 0 where the
        source never mattered or the target never activated."""
        A = self.raw[(source, target)]
        denom = self.ci_sum[source][:, None] * self.rms[target][None, :]
        return torch.where(denom > 0, A / denom.clamp_min(1e-30), 0.0)

    def top_edges(self, n: int = 20) -> list[tuple[str, int, str, int, float]]:
        """``(source, c1, target, c2, Â)`` of the ``n`` edges with the largest ``|Â|``."""
        out = []
        for (s1, s2) in self.raw:
            a = self.normalized(s1, s2)
            for i, j in (a.abs() > 0).nonzero().tolist():
                out.append((s1, i, s2, j, float(a[i, j])))
        return sorted(out, key=lambda e: abs(e[4]), reverse=True)[:n]

    def __repr__(self) -> str:
        rows = [{"from": f"{s1}:{c1}", "to": f"{s2}:{c2}", "attr": w}
                for s1, c1, s2, c2, w in self.top_edges(15)]
        table = text_table([("from", "from"), ("to", "to"), ("attr", "Â")], rows,
                           lambda k, v: f"{v:+.4f}" if k == "attr" else str(v))
        kind = "A_abs" if self.absolute else "A"
        return "\n".join([f"DatasetAttributions ({kind}, normalised) over {self.n_tokens:,} tokens, "
                          f"{len(self.sites)} sites; top edges:"]
                         + ["  " + line for line in table.splitlines()])


def dataset_attributions(
    dec: Decomposition,
    data,
    *,
    batch_size: int = 8,
    absolute: bool = False,
    targets: Sequence[str] | None = None,
    progress: bool = True,
) -> DatasetAttributions:
    """Normalised attributions between all subcomponents, summed over ``data`` (see the module).

    Arguments:
        dec: the decomposition (of a language model).
        data: token ids ``[n, seq]``, an iterable of batches, or a dataset.
        batch_size: sequences per forward pass (tensor data).
        absolute: the ``A_abs`` variant.
        targets: target sites (default all); sources are every site.
        progress: a ``tqdm.auto`` bar over the batches.
    """
    names = dec.sites
    tgt = names if targets is None else [dec.site(s).name for s in targets]
    C = {s: dec.components[s].C for s in names}
    raw = {(s1, s2): torch.zeros(C[s1], C[s2], dtype=torch.float64) for s1 in names for s2 in tgt}
    ci_sum = {s: torch.zeros(C[s], dtype=torch.float64) for s in names}
    sq = {s: torch.zeros(C[s], dtype=torch.float64) for s in names}
    n_tok = 0
    for batch in tqdm(iter_token_batches(data, batch_size), desc="dataset attributions",
                      disable=not progress, dynamic_ncols=True):
        with torch.no_grad():
            _, xs = dec.run_target(batch)
            ci = {k: v.detach() for k, v in dec.ci(xs).lower.items()}
        _, acts, leaves, _ = leaf_forward(dec, batch)
        n_tok += batch.numel()
        for s in names:
            ci_sum[s] += ci[s].flatten(0, -2).sum(0).double().cpu()
            sq[s] += leaves[s].detach().flatten(0, -2).pow(2).sum(0).double().cpu()
        weight = {s: (leaves[s].detach() * ci[s]) for s in names}  # a1 · g1
        for s2 in tgt:
            for c2 in range(C[s2]):
                y = acts[s2][..., c2]
                y = (y.abs() if absolute else y).sum()
                if not y.requires_grad:
                    continue
                grads = torch.autograd.grad(y, [leaves[s] for s in names], retain_graph=True,
                                            allow_unused=True)
                for s1, g in zip(names, grads):
                    if g is not None:
                        raw[(s1, s2)][:, c2] += (g * weight[s1]).flatten(0, -2).sum(0).double().cpu()
    if n_tok == 0:
        raise ValueError("dataset_attributions got no data")
    rms = {s: (sq[s] / n_tok).sqrt() for s in names}
    return DatasetAttributions(names, raw, ci_sum, rms, n_tok, absolute)
