"""Feature splitting between two dictionaries of output directions.

The VPD paper's geometric test (appendix "Confirming feature splitting in PLTs and CLTs"): match
the alive objects of a source model to those of a target model of another size by the cosine
similarity of their output vectors (a transcoder latent's decoder row; a VPD subcomponent's
down-projection ``U`` column), a match being cosine > 0.5; the fraction of source objects with
*more than one* match in the target, averaged over layers, measures how much the target split
what the source represents as one feature.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from tl_vpd._typing import Float

__all__ = ["SPLIT_COSINE", "mean_split_fraction", "split_fraction"]

SPLIT_COSINE = 0.5  # VPD paper: a match; its results are stable for thresholds in [0.3, 0.7]


def split_fraction(source: Float[torch.Tensor, "n d"], target: Float[torch.Tensor, "m d"],
                   threshold: float = SPLIT_COSINE, absolute: bool = False) -> float | None:
    """Fraction of ``source`` directions with more than one ``target`` direction at cosine
    similarity above ``threshold``.

    Arguments:
        source: the source model's alive output directions (one per row).
        target: the target model's alive output directions.
        threshold: the cosine that counts as a match.
        absolute: compare ``|cos|``; right for VPD, where ``(U, V)`` and ``(−U, −V)`` are the
            same subcomponent (a transcoder latent's sign is fixed by its ReLU).

    Returns:
        The fraction, or ``None`` when ``source`` is empty.
    """
    if source.shape[0] == 0:
        return None
    if target.shape[0] == 0:
        return 0.0
    cos = F.normalize(source.double(), dim=-1) @ F.normalize(target.double(), dim=-1).T
    if absolute:
        cos = cos.abs()
    return ((cos > threshold).sum(-1) > 1).double().mean().item()


def mean_split_fraction(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
                        threshold: float = SPLIT_COSINE, absolute: bool = False) -> float | None:
    """:func:`split_fraction` of each ``(source, target)`` pair (one per layer), averaged over
    the pairs whose source is non-empty (``None`` if none is)."""
    values = [split_fraction(s, t, threshold, absolute) for s, t in pairs]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
