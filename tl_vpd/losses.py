"""The VPD losses, as pure functions of tensors and numbers (schedules: :mod:`tl_vpd.schedules`).

Notation (VPD paper): a site has target weight ``W`` ``[d_out, d_in]``,
subcomponents ``U`` ``[d_out, C]`` and ``V`` ``[C, d_in]``, and ``Δ = W − U V``. ``ci_upper`` is
the causal importance ``g`` after the upper-leaky hard sigmoid, one tensor ``[*batch, C]`` per
site (``[batch, pos, C]`` for a transformer, ``[batch, C]`` for a toy model).

Total loss (VPD paper), with the config's coefficients:
``coeff_adversarial·L_adv + coeff_stochastic·L_stoch + coeff_minimality·L_min
+ coeff_faithfulness·L_Δ``, where ``L_min = L_imp + freq_beta·L_freq`` is the paper's fused minimality
loss.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tl_vpd._typing import Float

__all__ = [
    "faithfulness_loss",
    "kl_recon_loss",
    "TargetDistribution",
    "prepare_target",
    "mse_recon_loss",
    "recon_loss",
    "importance_minimality_loss",
    "frequency_minimality_loss",
    "minimality_from_frequencies",
    "minimality_loss",
]


def faithfulness_loss(deltas: Sequence[Float[Tensor, "_d_out _d_in"]]) -> Float[Tensor, ""]:
    """Δ-L2: the mean squared entry of the residuals `Δ = W − U V` over all decomposed weights.

    `Σ_sites ‖Δ‖_F² / Σ_sites numel(Δ)` — the VPD paper's Δ-L2 loss and the SPD paper's
    faithfulness loss (the same quantity). Sums are taken in at least float32.

    Arguments:
        deltas: one residual matrix per site (shapes may differ between sites).

    Returns:
        A scalar tensor.
    """
    if len(deltas) == 0:
        raise ValueError("faithfulness_loss needs at least one site's Δ (got an empty sequence)")
    squared = sum(_upcast(delta).pow(2).sum() for delta in deltas)
    return squared / sum(delta.numel() for delta in deltas)


def kl_recon_loss(
    target_logits: Float[Tensor, "*batch vocab"], masked_logits: Float[Tensor, "*batch vocab"]
) -> Float[Tensor, ""]:
    """KL(target ‖ masked) between output distributions, summed over the vocabulary and averaged
    over every leading (batch, position) index.

    The target is treated as a constant (detached). Both distributions come from `log_softmax`
    for stability.

    Arguments:
        target_logits: logits of the target model.
        masked_logits: logits of the model with masked weights, same shape.

    Returns:
        A scalar tensor, `mean_{b,t} Σ_v p_v (log p_v − log q_v)`.
    """
    target_logprobs = F.log_softmax(_upcast(target_logits.detach()), dim=-1)
    masked_logprobs = F.log_softmax(_upcast(masked_logits), dim=-1)
    kl = F.kl_div(masked_logprobs, target_logprobs, reduction="none", log_target=True)
    return kl.sum(dim=-1).mean()


class TargetDistribution:
    """The target's output distribution, computed once per batch for every KL against it.

    A training step compares several masked forwards with the same target (stochastic,
    adversarial ascent steps, the outer adversarial pass); the target's ``log_softmax`` and
    probabilities are the same for all of them. :func:`recon_loss` accepts this in place of the
    target logits and then runs one fused node per KL (:class:`_KLToTarget`).
    """

    def __init__(self, target_logits: Float[Tensor, "*batch vocab"]):
        self.logprobs = F.log_softmax(_upcast(target_logits.detach()), dim=-1)
        self.probs = self.logprobs.exp()
        self.shape = target_logits.shape


class _KLToTarget(torch.autograd.Function):
    """``mean_{b,t} Σ_v p_v (log p_v − log q_v)`` with ``q = softmax(x)``; backward ``(q − p) / n``
    from the saved ``log q`` (the same value and gradient as :func:`kl_recon_loss`, fewer passes
    over ``[tokens, vocab]``)."""

    @staticmethod
    def forward(ctx, x, logp, p):
        logq = F.log_softmax(_upcast(x), dim=-1)
        n = logq.numel() // logq.shape[-1]
        kl = torch.dot(p.reshape(-1), (logp - logq).reshape(-1)) / n
        ctx.save_for_backward(logq, p)
        ctx.n, ctx.dtype = n, x.dtype
        return kl

    @staticmethod
    def backward(ctx, grad):
        logq, p = ctx.saved_tensors
        return logq.exp_().sub_(p).mul_(grad / ctx.n).to(ctx.dtype), None, None


def prepare_target(target: Tensor, kind: str) -> "Tensor | TargetDistribution":
    """``target`` ready for repeated :func:`recon_loss` calls: its distribution for ``"kl"``."""
    return TargetDistribution(target) if kind == "kl" else target


def mse_recon_loss(
    target_out: Float[Tensor, "*shape"], masked_out: Float[Tensor, "*shape"]
) -> Float[Tensor, ""]:
    """Mean squared error over all elements, the reconstruction distance of the SPD paper's toy
    models. The target is treated as a constant (detached).

    Arguments:
        target_out: outputs of the target model.
        masked_out: outputs of the model with masked weights, same shape.

    Returns:
        A scalar tensor, `mean((masked − target)²)`.
    """
    return (_upcast(masked_out) - _upcast(target_out.detach())).pow(2).mean()


def recon_loss(
    target: "Float[Tensor, '*shape'] | TargetDistribution",
    masked: Float[Tensor, "*shape"],
    kind: Literal["kl", "mse"],
) -> Float[Tensor, ""]:
    """Reconstruction distance `D(target, masked)` chosen by `kind`.

    Arguments:
        target: target-model outputs (logits for `"kl"`), or for `"kl"` a
            :class:`TargetDistribution` made once for many calls (:func:`prepare_target`).
        masked: masked-model outputs, same shape.
        kind: `"kl"` (`kl_recon_loss`) or `"mse"` (`mse_recon_loss`). Anything else raises;
            resolve the config's `"auto"` before calling.

    Returns:
        A scalar tensor.
    """
    if isinstance(target, TargetDistribution):
        if kind != "kl" or target.shape != masked.shape:
            raise ValueError(f"a TargetDistribution is for kind 'kl' with logits shaped "
                             f"{tuple(target.shape)} (got {kind!r}, {tuple(masked.shape)})")
        return _KLToTarget.apply(masked, target.logprobs, target.probs)
    if kind == "kl":
        return kl_recon_loss(target, masked)
    if kind == "mse":
        return mse_recon_loss(target, masked)
    raise ValueError(f"recon_loss kind must be 'kl' or 'mse' (got {kind!r})")


def importance_minimality_loss(
    ci_upper: Mapping[str, Float[Tensor, "*_batch _C"]], p: float, eps: float = 1e-12
) -> Float[Tensor, ""]:
    """Importance minimality: `Σ_sites Σ_c mean_{b,t} (|g| + eps)^p`.

    Averaging over tokens (the VPD paper's `1/(BT)`) makes it independent of the batch size.

    Arguments:
        ci_upper: site -> upper-leaky causal importances `[*batch, C]`.
        p: the exponent (annealed, see `p_schedule`).
        eps: keeps the gradient of `x^p` finite at 0 for `p < 1`.

    Returns:
        A scalar tensor.
    """
    return sum(f.sum() for f in _firing_frequencies(ci_upper, p, eps).values())


def frequency_minimality_loss(
    ci_upper: Mapping[str, Float[Tensor, "*_batch _C"]],
    p: float,
    eps: float,
    ref_tokens: int,
) -> Float[Tensor, ""]:
    """Frequency minimality: penalise often-used subcomponents superlinearly, independently of the
    batch size.

    With the frequency `f_c = mean_{b,t} (|g_c| + eps)^p`, the loss is
    `Σ_sites Σ_c f_c · log2(1 + ref_tokens · f_c)`; gradient flows through both factors.

    The VPD paper's form is `(1/BT) Σ_c s_c log2(1 + s_c)` with the raw batch sum
    `s_c = Σ_{b,t} |g_c|^p = BT·f_c`, which grows with `BT` for the same per-token CI
    distribution. Replacing `BT` inside the log with the fixed `ref_tokens` gives exactly the
    paper's value when `B·T == ref_tokens` (64 × 512 = 32768 in the paper) and a value that does
    not change with the batch size otherwise.

    Arguments:
        ci_upper: site -> upper-leaky causal importances `[*batch, C]`.
        p: the exponent (annealed, see `p_schedule`).
        eps: keeps the gradient of `x^p` finite at 0 for `p < 1`.
        ref_tokens: the token count at which this equals the paper's raw-sum form.

    Returns:
        A scalar tensor.
    """
    frequencies = _firing_frequencies(ci_upper, p, eps)
    return sum(_frequency_penalty(f, ref_tokens) for f in frequencies.values())


def minimality_loss(
    ci_upper: Mapping[str, Float[Tensor, "*_batch _C"]],
    p: float,
    eps: float,
    freq_beta: float,
    ref_tokens: int,
    global_mean: Callable[[Tensor], Tensor] | None = None,
) -> Float[Tensor, ""]:
    """The VPD paper's fused minimality loss, `L_imp + freq_beta · L_freq`.

    Its coefficient (`coeff_minimality`, 2e-4 in the paper) multiplies both terms, so the
    frequency term's effective coefficient is `freq_beta × coeff_minimality` (1e-4 in the paper).

    Arguments:
        ci_upper: site -> upper-leaky causal importances `[*batch, C]`.
        p: the exponent (annealed, see `p_schedule`).
        eps: keeps the gradient of `x^p` finite at 0 for `p < 1`.
        freq_beta: weight of the frequency term relative to the importance term.
        ref_tokens: see `frequency_minimality_loss`.
        global_mean: under data parallelism, maps this rank's frequencies to ones whose value is
            the mean over ranks (`tl_vpd.distributed.Shard.global_mean_value`), so the frequency term
            sees the global batch.

    Returns:
        A scalar tensor.
    """
    return minimality_from_frequencies(_firing_frequencies(ci_upper, p, eps), freq_beta,
                                       ref_tokens, global_mean)


def minimality_from_frequencies(
    frequencies: Mapping[str, Float[Tensor, "_C"]],
    freq_beta: float,
    ref_tokens: int,
    global_mean: Callable[[Tensor], Tensor] | None = None,
) -> Float[Tensor, ""]:
    """:func:`minimality_loss` from the per-subcomponent frequencies
    ``f_c = mean_{b,t} (|g_c| + eps)^p`` (the training step computes them with the fused
    :func:`tl_vpd.fused.firing_frequency`).

    Arguments:
        frequencies: site -> ``[C]``.
        freq_beta, ref_tokens, global_mean: as in :func:`minimality_loss`.

    Returns:
        A scalar tensor.
    """
    if global_mean is not None:
        frequencies = {k: global_mean(f) for k, f in frequencies.items()}
    importance = sum(f.sum() for f in frequencies.values())
    if freq_beta == 0:
        return importance
    frequency = sum(_frequency_penalty(f, ref_tokens) for f in frequencies.values())
    return importance + freq_beta * frequency


def _firing_frequencies(
    ci_upper: Mapping[str, Float[Tensor, "*_batch _C"]], p: float, eps: float
) -> dict[str, Float[Tensor, "_C"]]:
    """site -> `mean_{b,t} (|g| + eps)^p`, one value per subcomponent."""
    if not ci_upper:
        raise ValueError("minimality losses need at least one site's causal importances (got none)")
    frequencies = {}
    for site, ci in ci_upper.items():
        if ci.ndim < 2:
            raise ValueError(
                f"causal importances of {site!r} must be [*batch, C] with at least one batch "
                f"dimension (got shape {tuple(ci.shape)})"
            )
        frequencies[site] = (_upcast(ci).abs() + eps).pow(p).flatten(0, -2).mean(dim=0)
    return frequencies


def _frequency_penalty(frequency: Float[Tensor, "_C"], ref_tokens: int) -> Float[Tensor, ""]:
    return (frequency * torch.log2(1.0 + ref_tokens * frequency)).sum()


def _upcast(x: Tensor) -> Tensor:
    """`x` in at least float32, so sums over many elements keep their precision."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
