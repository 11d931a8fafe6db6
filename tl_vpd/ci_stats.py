"""Per-site statistics of the causal importances that :func:`tl_vpd.evaluate.evaluate` reports:
L0 and alive counts (per site, per layer, in total), the spectrum of mean CI and CI histograms.
"""

from __future__ import annotations

import torch

from tl_vpd.report import ALIVE_THRESHOLD

__all__ = ["CI_HIST_BINS", "alive_count", "ci_histogram", "ci_histograms", "ci_spectrum",
           "l0_tables"]

CI_HIST_BINS = 20  # library choice: bins of the CI histograms over (0, 1]


def alive_count(ci_sum: torch.Tensor, n_tokens: int) -> int:
    """How many subcomponents are alive: mean CI over the evaluated tokens above
    ``ALIVE_THRESHOLD`` (the one definition of the evaluation report and the training curves).

    Arguments:
        ci_sum: one site's summed CI of each subcomponent over the tokens, ``[C]``.
        n_tokens: the number of tokens summed over.
    """
    return int((ci_sum / max(n_tokens, 1) > ALIVE_THRESHOLD).sum())


def ci_histogram(flat: torch.Tensor) -> torch.Tensor:
    """Counts of one batch's CI values of a site (summed over batches by the caller).

    Arguments:
        flat: the site's causal importances, ``[tokens, C]``.

    Returns:
        ``[zeros, bin_1 .. bin_B]`` (float64): the values ``<= 0``, then a histogram of the rest
        in ``CI_HIST_BINS`` equal bins over (0, 1] (values above 1 in the last).
    """
    pos = flat[flat > 0].float()
    return torch.cat([torch.tensor([float(flat.numel() - pos.numel())]),
                      torch.histc(pos.clamp(max=1.0), CI_HIST_BINS, 0.0, 1.0)]).double()


def ci_histograms(hist: dict[str, torch.Tensor]) -> list[dict]:
    """The summed counts of :func:`ci_histogram` as report rows.

    Arguments:
        hist: per site, the summed ``[zeros, bin_1 .. bin_B]``.

    Returns:
        Per site ``{"site", "zeros", "edges" (B + 1 bin edges), "counts" (B)}``.
    """
    edges = [i / CI_HIST_BINS for i in range(CI_HIST_BINS + 1)]
    return [{"site": n, "zeros": int(h[0]), "edges": edges, "counts": [int(c) for c in h[1:]]}
            for n, h in hist.items()]


def ci_spectrum(ci_sum: dict[str, torch.Tensor], n_tokens: int) -> list[dict]:
    """Per site, every subcomponent's mean CI, largest first: the VPD paper's recipe (training
    recipe, "number of subcomponents") inspects the spectrum of log mean CI, whose sharp cutoff
    separates alive from dead subcomponents, to choose C.

    Arguments:
        ci_sum: per site, the sum of each subcomponent's CI over the evaluated tokens.
        n_tokens: the number of evaluated tokens.

    Returns:
        Per site ``{"site", "mean_ci": [C floats, descending]}``.
    """
    return [{"site": n, "mean_ci": (s / max(n_tokens, 1)).sort(descending=True).values.tolist()}
            for n, s in ci_sum.items()]


def l0_tables(dec, ci_sum, fired, l0_sum, n_tokens):
    """The L0 and alive tables of the report.

    Arguments:
        dec: the decomposition (its sites, their layers and C).
        ci_sum: per site, the summed CI of each subcomponent.
        fired: per site, whether each subcomponent had CI > 0 on some token.
        l0_sum: per site, the summed count of subcomponents with CI > 0 per token.
        n_tokens: the number of evaluated tokens.

    Returns:
        ``(sites, layers, total)``: rows with ``C``, ``l0``, ``alive``, ``fired`` and
        ``l0_per_alive`` (L0 per token ÷ alive subcomponents), per site, per layer, in total.
    """
    sites = []
    for n in dec.sites:
        sites.append({"site": n, "layer": dec.site(n).layer, "C": dec.components[n].C,
                      "l0": l0_sum[n] / n_tokens, "alive": alive_count(ci_sum[n], n_tokens),
                      "fired": int(fired[n].sum())})

    def summed(rows):
        out = {k: sum(r[k] for r in rows) for k in ("C", "l0", "alive", "fired")}
        out["l0_per_alive"] = out["l0"] / out["alive"] if out["alive"] else None
        return out

    for r in sites:
        r["l0_per_alive"] = r["l0"] / r["alive"] if r["alive"] else None
    layer_ids = list(dict.fromkeys(r["layer"] for r in sites))
    layers = [{"layer": l, **summed([r for r in sites if r["layer"] == l])} for l in layer_ids]
    return sites, layers, summed(sites)
