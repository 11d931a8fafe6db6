"""Pruned attribution graphs: causal importances optimised post hoc for one behaviour on one
prompt (VPD paper, appendix "Pruning for specific behaviors: Post-hoc causal importance
optimization", and the section "Pruning for specific behaviors").

The base CI function keeps every subcomponent needed for the whole output on every position; to
study one prediction (token ``y`` at position ``t*``) new causal importances ``g̃`` are fitted:

* only *alive* subcomponents (base ``g > 0`` at that position) get a parameter ``φ_{t,c}``,
  initialised to the base pre-activation; the others stay at 0;
* ``g̃ = σ_H,lower(φ)`` builds the masks ``m = g̃ + (1 − g̃) r`` and ``σ_H,upper(φ)`` enters the
  minimality loss, as in base training;
* the loss is ``λ_recon L_recon(stochastic r) + λ_min L_min + λ_recon L_recon(adversarial r)``,
  with ``L_recon`` the cross-entropy of ``y`` at ``t*`` (or the KL to the target there). The
  adversary runs a few PGD steps on the sources of alive subcomponents only; every other source
  (including Δ's) is drawn uniformly, so it cannot tune the noise of the many inactive
  subcomponents of one prompt;
* AdamW on ``φ`` with a linear warm-up and cosine decay; U, V and the target stay frozen.

Defaults are the paper's footnote settings for its "princess" graph: 0.5 stochastic CE, 0.5 CE
under 4 PGD steps of size 1, minimality coefficient 0.09 with ``p = 0.3``, 2000 steps.

``mode="ci"`` is the paper's type-2 graph: the masks are ``g̃`` itself (no sampling), coefficient
1 for both terms. The paper shows such graphs are not adversarially faithful; :class:`PrunedCI`
reports the stochastic and adversarial KL at ``t*`` so that can be checked.

The survivors (``g̃ > 0``) are the nodes of the pruned graph; edges are the gradient attributions
of :func:`tl_vpd.analysis.attribution_graph` computed with ``g̃`` in place of the base CI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tl_vpd._typing import Int
from tl_vpd.adversary import fresh_pgd, init_sources
from tl_vpd.analysis.attribution import AttributionGraph, attribution_graph
from tl_vpd.importance import lower_leaky_sigmoid, upper_leaky_sigmoid
from tl_vpd.losses import kl_recon_loss, minimality_loss
from tl_vpd.masking import masks_from_sources, sample_sources, zero_masks
from tl_vpd.schedules import lr_schedule
from tl_vpd.tables import text_table

if TYPE_CHECKING:
    from tl_vpd.decomposition import Decomposition

__all__ = ["PrunedCI", "optimize_ci", "pruned_attribution_graph"]


class PrunedCI:
    """Post-hoc causal importances of one prompt (see the module).

    Attributes:
        ci, base_ci: ``{site: [pos, C]}`` the optimised and the base causal importances.
        alive: ``{site: Bool[pos, C]}`` the subcomponents that could be kept.
        position, target: the behaviour: token ``target`` at ``position``.
        metrics: KL(target ‖ masked) at ``position`` and the target token's probability under
            CI masks, stochastic masks (mean of ``n_eval`` draws) and adversarial masks (PGD on
            the alive sources, the strongest of three starts): ``kl_ci``, ``kl_stochastic``, ``kl_adversarial``, ``p_target``,
            ``p_ci``, ``p_stochastic``, ``p_adversarial``.
        history: the loss terms every ``log_every`` steps.
    """

    def __init__(self, ci, base_ci, alive, position: int, target: int, metrics: dict, history: list,
                 mode: str):
        self.ci, self.base_ci, self.alive = ci, base_ci, alive
        self.position, self.target, self.metrics, self.history, self.mode = (
            position, target, metrics, history, mode)

    def kept(self, threshold: float = 0.0) -> list[tuple[str, int, int]]:
        """``(site, pos, c)`` of the survivors, ``g̃ > threshold``."""
        return [(s, t, c) for s, g in self.ci.items() for t, c in (g > threshold).nonzero().tolist()]

    @property
    def n_alive(self) -> int:
        return int(sum(a.sum() for a in self.alive.values()))

    def __repr__(self) -> str:
        m = self.metrics
        rows = [{"masks": k, "kl": m[f"kl_{k}"], "p": m[f"p_{k}"]}
                for k in ("ci", "stochastic", "adversarial")]
        table = text_table([("masks", "masks"), ("kl", "KL at t*"), ("p", "p(target)")], rows,
                           lambda k, v: v if k == "masks" else f"{v:.4f}")
        return "\n".join([f"PrunedCI ({self.mode}): {len(self.kept())} of {self.n_alive} alive "
                          f"subcomponent-positions kept for token {self.target} at position "
                          f"{self.position} (target p = {m['p_target']:.4f})"]
                         + ["  " + line for line in table.splitlines()])


def _recon(logits, target_logits, position: int, target: int, loss: str) -> torch.Tensor:
    if loss == "ce":
        return F.cross_entropy(logits[:, position].float(), torch.tensor([target], device=logits.device))
    return kl_recon_loss(target_logits[:, position], logits[:, position])


def _zero_sources(g):
    """Sources 0 for every subcomponent and Δ: the masks are the causal importances."""
    return {k: F.pad(z, (0, 1)) for k, z in zero_masks(g).items()}


def _adversarial_sources(dec, tokens, g, alive_src, base, n_steps, step_size, gen, objective,
                         init="random"):
    """PGD on the alive subcomponents' sources; the rest keep the uniform draw ``base``."""
    def loss_fn(s):
        src = {k: torch.where(alive_src[k], s[k], base[k]) for k in s}
        masks, dm = masks_from_sources(g, src)
        return objective(dec.run_masked(tokens, masks, dm))

    found = fresh_pgd(loss_fn, init_sources(g, "per_token", init, gen), n_steps, step_size)
    return {k: torch.where(alive_src[k], found[k], base[k]) for k in found}


def optimize_ci(
    dec: Decomposition,
    tokens: Int[torch.Tensor, "..."],
    target: int | None = None,
    *,
    position: int = -1,
    mode: Literal["adversarial", "ci"] = "adversarial",
    loss: Literal["ce", "kl"] = "ce",
    steps: int = 2000,
    lr: float = 0.01,
    warmup_frac: float = 0.05,
    coeff_recon: float = 0.5,
    coeff_minimality: float = 0.09,
    p: float = 0.3,
    eps: float = 1e-12,
    freq_beta: float = 0.0,
    pgd_steps: int = 4,
    pgd_step_size: float = 1.0,
    n_eval: int = 16,
    eval_pgd_steps: int = 20,
    seed: int = 0,
    log_every: int = 50,
    progress: bool = True,
) -> PrunedCI:
    """Optimise one prompt's causal importances for one prediction (see the module).

    Arguments:
        dec: the decomposition.
        tokens: the prompt, ``[pos]`` or ``[1, pos]``.
        target: the token whose prediction at ``position`` is kept (default: the target
            model's top prediction there).
        position: ``t*``.
        mode: ``"adversarial"`` (stochastic + adversarial sampling, the paper's type-1 graphs)
            or ``"ci"`` (CI masks only, type 2; coefficient 1 for reconstruction).
        loss: ``"ce"`` (−log p(target) at ``t*``) or ``"kl"`` (KL to the target model at ``t*``).
        steps, lr, warmup_frac: AdamW steps on ``φ``, peak learning rate (not given in the
            paper) and warm-up fraction of the cosine schedule.
        coeff_recon: ``λ_recon``, applied to the stochastic and the adversarial term (paper 0.5).
        coeff_minimality, p, eps, freq_beta: the minimality loss (paper: 0.09, ``p = 0.3``;
            ``freq_beta`` adds the frequency term).
        pgd_steps, pgd_step_size: the adversary during optimisation (paper: 4 steps, size 1).
        n_eval, eval_pgd_steps: stochastic draws and PGD steps (size ``2 / steps``; from random,
            zero and one sources, the strongest kept) of the final evaluation.
        seed: seeds the sampled sources.
        log_every: steps between entries of ``history``.
        progress: a ``tqdm.auto`` bar.
    """
    if mode not in ("adversarial", "ci"):
        raise ValueError(f"mode must be 'adversarial' or 'ci', got {mode!r}")
    if loss not in ("ce", "kl"):
        raise ValueError(f"loss must be 'ce' or 'kl', got {loss!r}")
    tokens = tokens[None] if tokens.dim() == 1 else tokens
    if tokens.shape[0] != 1:
        raise ValueError(f"optimize_ci takes one prompt, got a batch of {tokens.shape[0]}")
    T = tokens.shape[1]
    position = position % T
    with torch.no_grad():
        target_logits, xs = dec.run_target(tokens)
        pre = {k: z.detach() for k, z in dec.ci(xs).pre.items()}
    base = {k: z.clamp(0.0, 1.0) for k, z in pre.items()}
    alive = {k: g > 0 for k, g in base.items()}
    target = int(target_logits[0, position].argmax()) if target is None else int(target)
    alpha = dec.leaky_alpha
    phi = {k: z.clone().requires_grad_(True) for k, z in pre.items()}
    opt = torch.optim.AdamW(list(phi.values()), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    alive_src = {k: F.pad(a, (0, 1), value=False) for k, a in alive.items()}  # Δ: never attacked
    objective = lambda logits: _recon(logits, target_logits, position, target, loss)  # noqa: E731
    c_recon = 1.0 if mode == "ci" else coeff_recon
    history = []

    def ci_views():
        low = {k: torch.where(alive[k], lower_leaky_sigmoid(v, alpha), 0.0) for k, v in phi.items()}
        up = {k: torch.where(alive[k], upper_leaky_sigmoid(v, alpha), 0.0) for k, v in phi.items()}
        return low, up

    for step in tqdm(range(steps), desc="post-hoc CI", disable=not progress, dynamic_ncols=True):
        for group in opt.param_groups:
            group["lr"] = lr_schedule(step, steps, lr, int(warmup_frac * steps), 0.0, warmup_offset=1)
        low, up = ci_views()
        terms = {"minimality": minimality_loss(up, p, eps, freq_beta, T)}
        if mode == "ci":
            masks, dm = masks_from_sources(low, _zero_sources(low))
            terms["recon_ci"] = objective(dec.run_masked(tokens, masks, dm))
        else:
            masks, dm = masks_from_sources(low, sample_sources(low, gen))
            terms["recon_stochastic"] = objective(dec.run_masked(tokens, masks, dm))
            detached = {k: g.detach() for k, g in low.items()}
            adv = _adversarial_sources(dec, tokens, detached, alive_src, sample_sources(detached, gen),
                                       pgd_steps, pgd_step_size, gen, objective)
            masks, dm = masks_from_sources(low, adv)
            terms["recon_adversarial"] = objective(dec.run_masked(tokens, masks, dm))
        total = coeff_minimality * terms["minimality"] + c_recon * sum(
            v for k, v in terms.items() if k != "minimality")
        # Gradients go to φ alone: U, V and the CI function stay untouched (and keep no .grad).
        for v, gr in zip(phi.values(), torch.autograd.grad(total, list(phi.values()))):
            v.grad = gr
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            history.append({"step": step, **{k: float(v.detach()) for k, v in terms.items()}})
    with torch.no_grad():
        low, _ = ci_views()
    metrics = _evaluate(dec, tokens, low, alive_src, target_logits, position, target, n_eval,
                        eval_pgd_steps, gen)
    ci = {k: g[0].detach() for k, g in low.items()}
    return PrunedCI(ci, {k: g[0] for k, g in base.items()}, {k: a[0] for k, a in alive.items()},
                    position, target, metrics, history, mode)


def _evaluate(dec, tokens, g, alive_src, target_logits, position, target, n_eval, pgd_steps, gen) -> dict:
    """KL at ``t*`` and p(target) under CI, stochastic and adversarial (PGD on KL) masks."""
    def kl(logits):
        return kl_recon_loss(target_logits[:, position], logits[:, position])

    def prob(logits):
        return float(logits[0, position].float().softmax(-1)[target])

    out = {"p_target": prob(target_logits)}
    with torch.no_grad():
        logits = dec.run_masked(tokens, *masks_from_sources(g, _zero_sources(g)))
        out["kl_ci"], out["p_ci"] = float(kl(logits)), prob(logits)
        kls, ps = [], []
        for _ in range(n_eval):
            logits = dec.run_masked(tokens, *masks_from_sources(g, sample_sources(g, gen)))
            kls.append(float(kl(logits)))
            ps.append(prob(logits))
        out["kl_stochastic"], out["p_stochastic"] = sum(kls) / n_eval, sum(ps) / n_eval
    worst = None
    for init in ("random", "zeros", "ones"):  # restarts; the report keeps the strongest attack
        with torch.enable_grad():
            adv = _adversarial_sources(dec, tokens, g, alive_src, sample_sources(g, gen), pgd_steps,
                                       2.0 / max(pgd_steps, 1), gen, kl, init)
        with torch.no_grad():
            logits = dec.run_masked(tokens, *masks_from_sources(g, adv))
            if worst is None or float(kl(logits)) > worst[0]:
                worst = (float(kl(logits)), prob(logits))
    out["kl_adversarial"], out["p_adversarial"] = worst
    return out


def pruned_attribution_graph(
    dec: Decomposition,
    tokens: Int[torch.Tensor, "..."],
    target: int | None = None,
    *,
    position: int = -1,
    min_abs: float = 0.0,
    decode: Callable | None = None,
    progress: bool = True,
    **kwargs,
) -> AttributionGraph:
    """The attribution graph of one prediction among the subcomponents that survive post-hoc CI
    optimisation (:func:`optimize_ci`, whose keyword arguments ``kwargs`` takes).

    Returns:
        An :class:`~tl_vpd.analysis.AttributionGraph` whose ``pruning`` attribute is the
        :class:`PrunedCI` (with its stochastic and adversarial KL).
    """
    pruned = optimize_ci(dec, tokens, target, position=position, progress=progress, **kwargs)
    graph = attribution_graph(dec, tokens, pruned.target, position=pruned.position, ci=pruned.ci,
                              min_abs=min_abs, decode=decode, progress=progress)
    graph.pruning = pruned
    return graph
