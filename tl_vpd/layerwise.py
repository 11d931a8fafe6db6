"""SPD's layerwise reconstruction loss in one forward pass over a stacked batch.

The layerwise loss (SPD paper) runs the model once per site with that site alone masked and
averages the reconstruction losses. On a small model (the toys) each of those passes costs far
more in per-pass overhead (hook installation, kernel launches, one backward each) than in
arithmetic, so here the batch is repeated once per site and copy ``j`` masks site ``j`` only:
one forward and one backward for every site together.

The result is the per-site loop's: each copy computes exactly what site ``j``'s own pass
computes, and since the copies have equal sizes the mean reconstruction loss over the stacked
batch is the mean over sites of the per-site losses (equal up to float rounding). Only the
masked rows of each site compute the factorized term, so the arithmetic equals the loop's too;
memory grows with the number of sites, which is why language models keep the loop.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from tl_vpd._typing import Float

__all__ = ["stacked_layerwise_output"]


def stacked_layerwise_output(
    dec,
    batch: torch.Tensor,
    masks: Mapping[str, Float[torch.Tensor, "batch C"]],
    delta_masks: Mapping[str, Float[torch.Tensor, " batch"]],
) -> torch.Tensor:
    """The model's output on ``batch`` repeated once per site, copy ``j`` with only site ``j``
    masked (``dec.sites`` order).

    Arguments:
        dec: the :class:`~tl_vpd.Decomposition`.
        batch: one copy of the inputs, ``[b, ...]``.
        masks: ``{site: [b, *rest, C]}`` for every site, the masks of that site's copy.
        delta_masks: ``{site: [b, *rest]}`` likewise.

    Returns:
        ``[n_sites · b, ...]``: rows ``j·b … (j+1)·b − 1`` are ``model(batch)`` with site
        ``j`` masked.
    """
    sites = dec.sites
    missing = set(sites) - set(masks)
    if missing:
        raise ValueError(f"stacked layerwise forward needs a mask for every site; missing "
                         f"{sorted(missing)}")
    b = batch.shape[0]
    rows = {name: slice(j * b, (j + 1) * b) for j, name in enumerate(sites)}
    comps = dec.components

    def fn(site, x, out):
        sl = rows[site.name]
        part = comps[site.name].masked_output(x[sl], out[sl], masks[site.name],
                                              delta_masks[site.name])
        return torch.cat([out[:sl.start], part, out[sl.stop:]])

    stacked = batch.repeat(len(sites), *([1] * (batch.dim() - 1)))
    with dec.backend.hooks(dec.model, [dec.site(s) for s in sites], fn):
        return dec.model(stacked)
