"""Evaluating an edit: its effect where it is meant to act, and everywhere else.

VPD paper, "Editing a language model's parameters by hand": an edit is judged by its on-target
effect and by its off-target effects, the KL divergence between the target and the edited model
on held-out text (``D_KL,Global``: every token where the edited subcomponent is not causally
important). :func:`evaluate_edit` reports, per group of positions:

* ``KL(target ‖ edited)`` of the next-token distributions: the mean, the maximum, the mean over
  the worst ``top_frac`` of positions and the share of the total KL those positions hold (an
  edit whose damage is concentrated on a few positions shows a large share);
* the fraction of positions whose top-1 prediction changes;
* the output tokens whose predicted probability rises / falls most on average, and the input
  tokens at whose positions the KL is largest (decoded when a tokenizer or ``decode`` is given).

``on_target`` is a second dataset (reported as its own group), a predicate
``tokens -> bool [batch, pos]``, or ``"ci"`` (positions where an edited subcomponent is causally
important, the paper's split); the last two split the held-out positions into on and off target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from tl_vpd.analysis._tokens import fmt_token, iter_token_batches, token_decoder
from tl_vpd.analysis.edit import edit
from tl_vpd.analysis.selection import Selection, parse_selection
from tl_vpd.tables import html_table, text_table

if TYPE_CHECKING:
    from tl_vpd.decomposition import Decomposition

__all__ = ["EditEvaluation", "EditStats", "evaluate_edit"]


@dataclass
class EditStats:
    """How much an edit changes the next-token predictions on one group of positions."""

    n_positions: int
    kl_mean: float  # mean KL(target ‖ edited), nats
    kl_max: float
    kl_top_mean: float  # mean KL over the worst top_frac of positions
    kl_top_share: float  # share of the total KL on those positions
    top1_changed: float  # fraction of positions whose argmax prediction changes
    promoted: list[tuple[str, float]]  # output tokens by mean Δp, largest rise first
    suppressed: list[tuple[str, float]]  # largest fall first
    by_input: list[tuple[str, float, int]]  # (input token, mean KL at its positions, count)


class _Accumulator:
    def __init__(self, d_vocab: int):
        self.kls: list[torch.Tensor] = []
        self.changed = 0
        self.dp = torch.zeros(d_vocab, dtype=torch.float64)
        self.kl_tok = torch.zeros(d_vocab, dtype=torch.float64)
        self.n_tok = torch.zeros(d_vocab, dtype=torch.float64)

    def add(self, kl, changed, dp, tok) -> None:  # one row per position
        self.kls.append(kl)
        self.changed += int(changed.sum())
        self.dp += dp.sum(0)
        self.kl_tok.index_add_(0, tok, kl)
        self.n_tok.index_add_(0, tok, torch.ones_like(kl))

    def stats(self, to_str, top_frac: float, n: int) -> EditStats | None:
        if not self.kls:
            return None
        kl = torch.cat(self.kls)
        N = kl.numel()
        worst = kl.topk(max(1, round(top_frac * N))).values
        dp = self.dp / N
        mean_tok = self.kl_tok / self.n_tok.clamp_min(1)
        seen = (self.n_tok > 0).nonzero().flatten()
        top_in = seen[mean_tok[seen].argsort(descending=True)[:n]]
        return EditStats(
            N, float(kl.mean()), float(kl.max()), float(worst.mean()),
            float(worst.sum() / kl.sum()) if kl.sum() > 0 else 0.0, self.changed / N,
            [(to_str(i), float(dp[i])) for i in dp.topk(n).indices],
            [(to_str(i), float(dp[i])) for i in (-dp).topk(n).indices],
            [(to_str(i), float(mean_tok[i]), int(self.n_tok[i])) for i in top_in])


@dataclass
class EditEvaluation:
    """An edit's effect on held-out text (``off``) and on its target (``on``, when given).

    Attributes:
        edits: ``{site: {c: alpha}}``.
        model: the edited model (:func:`~tl_vpd.analysis.edit.edit`).
        off: off-target statistics (all held-out positions when ``on_target`` is a dataset or
            ``None``; those not on target otherwise).
        on: on-target statistics, or ``None``.
        on_target: how on-target positions were chosen (``"dataset"``, ``"predicate"``, ``"ci"``).
        top_frac: the fraction behind ``kl_top_mean`` / ``kl_top_share``.
    """

    edits: dict[str, dict[int, float]]
    model: nn.Module
    off: EditStats | None
    on: EditStats | None
    on_target: str | None
    top_frac: float

    @property
    def label(self) -> str:
        return ", ".join(f"{s}:{c}" + ("" if a == 0 else f"×{a:g}")
                         for s, cs in self.edits.items() for c, a in cs.items())

    def _rows(self) -> list[dict]:
        groups = [("off-target", self.off)] + ([] if self.on_target is None else [("on-target", self.on)])
        return [{"group": g, "n": s.n_positions, "kl": s.kl_mean, "top": s.kl_top_mean,
                 "share": s.kl_top_share, "max": s.kl_max, "changed": s.top1_changed}
                if s is not None else {"group": g, "n": 0} for g, s in groups]

    def _cols(self) -> list[tuple[str, str]]:
        pct = f"{100 * self.top_frac:g}%"
        return [("group", "positions"), ("n", "n"), ("kl", "KL mean"), ("top", f"KL worst {pct}"),
                ("share", f"KL share of worst {pct}"), ("max", "KL max"),
                ("changed", "top-1 changed")]

    def table(self) -> str:
        """Off- and on-target statistics as a text table."""
        return text_table(self._cols(), self._rows(), _fmt)

    def _changes(self, s: EditStats) -> list[str]:
        def toks(pairs):
            return ", ".join(f"{fmt_token(t)!r} {v:+.3g}" for t, v, *_ in pairs)

        return [f"promoted: {toks(s.promoted)}", f"suppressed: {toks(s.suppressed)}",
                f"largest mean KL after input tokens: {toks(s.by_input)}"]

    def _header(self) -> str:
        return f"EditEvaluation of {self.label} (KL(target ‖ edited) in nats)"

    def __repr__(self) -> str:
        lines = [self._header()] + ["  " + s for s in self.table().splitlines()]
        for name, s in (("off-target", self.off), ("on-target", self.on)):
            if s is not None:
                lines += [f"  {name} mean Δp:"] + ["    " + x for x in self._changes(s)]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return f"<p>{self._header()}</p>" + html_table(self._cols(), self._rows(), _fmt)


def _fmt(key: str, v) -> str:
    if v is None:
        return "—"
    if key in ("share", "changed"):
        return f"{100 * v:.1f}%"
    return f"{v:.3g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)


def _ci_split(dec: Decomposition, sel, threshold: float) -> Callable:
    def on(batch):
        ci = dec.causal_importance(batch)
        return torch.stack([ci[s][..., list(cs)] > threshold for s, cs in sel.items()
                            ], 0).any(0).any(-1)
    return on


@torch.no_grad()
def evaluate_edit(dec: Decomposition, edits: Selection, heldout, on_target=None, *,
                  edited: nn.Module | None = None, decode: Callable | None = None,
                  batch_size: int = 16, top_frac: float = 0.01, n_tokens: int = 5,
                  ci_threshold: float = 0.0) -> EditEvaluation:
    """Compare the edited model with the target on held-out text (and on target).

    Arguments:
        dec: the decomposition.
        edits: ``{site: {c: alpha}}`` or any selection (which removes), as for :func:`edit`.
        heldout: token ids ``[n, seq]`` or batches: the off-target text.
        on_target: ``None``; token ids (an on-target dataset, its own group); a predicate
            ``tokens [batch, pos] -> bool [batch, pos]``; or ``"ci"`` (positions where an edited
            subcomponent's CI exceeds ``ci_threshold``).
        edited: the edited model if already built (default: ``edit(dec, edits)``).
        decode: ``decode([id]) -> str`` for token labels (default: the model's tokenizer).
        batch_size: sequences per forward pass.
        top_frac: the worst fraction of positions summarised separately.
        n_tokens: tokens listed per ranking.
    """
    if not dec.backend.language_model:
        raise NotImplementedError(f"evaluate_edit compares next-token predictions; this "
                                  f"decomposition's backend is {dec.backend.name!r}")
    if not 0 < top_frac <= 1:
        raise ValueError(f"top_frac must lie in (0, 1], got {top_frac}")
    sel = parse_selection(edits)
    model = edited if edited is not None else edit(dec, sel)
    V = dec.model.cfg.d_vocab
    if isinstance(on_target, str):
        if on_target != "ci":
            raise ValueError(f"on_target must be None, tokens, a predicate or 'ci', got {on_target!r}")
        kind, split = "ci", _ci_split(dec, sel, ci_threshold)
    elif callable(on_target):
        kind, split = "predicate", on_target
    else:
        kind, split = (None if on_target is None else "dataset"), None
    off, on = _Accumulator(V), _Accumulator(V)

    def run(data, split, acc):
        for batch in iter_token_batches(data, batch_size):
            lo = dec.model(batch).double().log_softmax(-1)
            le = model(batch).double().log_softmax(-1)
            kl = (lo.exp() * (lo - le)).sum(-1).clamp_min(0).cpu()  # [b, T]
            changed = (lo.argmax(-1) != le.argmax(-1)).cpu()
            dp = (le.exp() - lo.exp()).cpu()
            tok = batch.cpu()
            where = torch.zeros_like(tok, dtype=torch.bool) if split is None else split(batch).cpu()
            if where.shape != tok.shape or where.dtype != torch.bool:
                raise ValueError(f"the on-target predicate must return a bool tensor of shape "
                                 f"{tuple(tok.shape)}, got {where.dtype} {tuple(where.shape)}")
            for m, a in ((~where, acc), (where, on)):
                if m.any():
                    a.add(kl[m], changed[m], dp[m], tok[m])

    run(heldout, split, off)
    if kind == "dataset":
        run(on_target, None, on)
    to_str = token_decoder(dec.model, decode)
    return EditEvaluation(sel, model, off.stats(to_str, top_frac, n_tokens),
                          on.stats(to_str, top_frac, n_tokens), kind, top_frac)
