"""The backend interface: how a decomposition reads and replaces a model's weight points.

A backend knows one family of models. It does two things:

* ``find_sites(model)`` lists every decomposable matrix as a :class:`~tl_vpd.sites.Site`;
* ``hooks(model, sites, fn)`` is a context manager that, during each forward pass, captures each
  site's true input ``x`` and calls ``fn(site, x, out)`` where ``out = x @ W.T + bias`` is the
  output the model computed; a returned tensor replaces ``out``. Hooks are removed in
  ``finally`` and every forward is checked: each site's capture and replace fired exactly once.

The core (components, masks, losses) only ever sees ``fn``; it knows nothing about the model.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from tl_vpd._typing import Float
from tl_vpd.sites import Site

__all__ = ["Backend", "HookSession", "SiteFn"]

SiteFn = Callable[[Site, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


class Backend(ABC):
    """One family of models (HookedTransformer, toy models, TransformerBridge)."""

    name: str = "abstract"
    #: whether the model maps token ids to next-token logits (KL reconstruction, CE tables)
    language_model: bool = False
    # What the analysis tools (tl_vpd.analysis) can do with this family; each tool checks its
    # flag and raises NotImplementedError naming the backend where it is False.
    #: :meth:`add_to_weight` writes into the model's parameters (``analysis.edit``)
    supports_edit: bool = False
    #: the model has TransformerLens hook points (``hook_dict``, ``run_with_cache``) that a
    #: ``VPDHookedModel`` can extend (``analysis.hooked``)
    supports_hooked_view: bool = False
    #: :meth:`embedding_points` gives the token/position embeddings and sites are per token, as
    #: attribution graphs need (``analysis.attribution_graph``)
    supports_attribution: bool = False

    @classmethod
    @abstractmethod
    def accepts(cls, model: nn.Module) -> bool:
        """Whether this backend handles ``model``."""

    @abstractmethod
    def find_sites(self, model: nn.Module) -> list[Site]:
        """Every decomposable matrix of ``model``, in forward order."""

    @abstractmethod
    def _install(self, model: nn.Module, session: HookSession) -> list:
        """Register capture/replace hooks for ``session.sites``; return removable handles."""

    def add_to_weight(self, model: nn.Module, site: Site,
                      delta: Float[torch.Tensor, "d_out d_in"]) -> None:
        """Add ``delta`` (``[d_out, d_in]``, the site's orientation) to the parameter that holds
        ``site``'s matrix in ``model``, in place, in that parameter's layout and dtype.

        ``site`` names the matrix (its layer and kind); ``model`` may be a copy of the one the
        site was found in. Backends without it (``supports_edit`` False) raise.
        """
        raise NotImplementedError(f"the {self.name} backend cannot write weights into its models")

    def embedding_points(self, model: nn.Module) -> list[nn.Module]:
        """The modules whose outputs are the embeddings the residual stream starts from (token,
        and learned positions where the model has them); a forward hook returning a tensor
        replaces that embedding. Backends without it (``supports_attribution`` False) raise."""
        raise NotImplementedError(f"the {self.name} backend does not expose its embeddings")

    def apply_rotary(self, model: nn.Module, layer: int,
                     x: Float[torch.Tensor, "batch pos head d_head"]
                     ) -> Float[torch.Tensor, "batch pos head d_head"]:
        """Rotate per-head queries/keys ``x`` at positions ``0..pos-1`` as layer ``layer``'s
        attention does (its pairing, ``rotary_dim`` and base), for the static Q·K interactions."""
        raise NotImplementedError(f"the {self.name} backend cannot apply its models' rotary")

    @contextlib.contextmanager
    def hooks(self, model: nn.Module, sites: Sequence[Site], fn: SiteFn) -> Iterator[HookSession]:
        """Install the swap for ``sites`` for the duration of the block."""
        session = HookSession(sites, fn)
        handles = [
            model.register_forward_pre_hook(lambda *_: session.begin()),
            model.register_forward_hook(lambda *_: session.end()),
        ]
        try:
            handles += self._install(model, session)
            yield session
        finally:
            for h in handles:
                h.remove()


class HookSession:
    """Per-forward state of an installed swap: captured inputs and firing counts."""

    def __init__(self, sites: Sequence[Site], fn: SiteFn):
        self.sites = {s.name: s for s in sites}
        self.fn = fn
        self._inputs: dict[str, torch.Tensor] = {}
        self._captured: Counter[str] = Counter()
        self._replaced: Counter[str] = Counter()

    def begin(self) -> None:
        self._inputs.clear()
        self._captured.clear()
        self._replaced.clear()

    def capture(self, name: str, x: torch.Tensor) -> None:
        self._inputs[name] = x
        self._captured[name] += 1

    def replace(self, name: str, out: torch.Tensor) -> torch.Tensor:
        x = self._inputs.pop(name, None)
        if x is None:
            raise RuntimeError(
                f"site {name}: its output hook fired before its input was captured; this model "
                "runs the layer in a way the backend does not support (e.g. a KV-cache or a "
                "partial forward)"
            )
        self._replaced[name] += 1
        new = self.fn(self.sites[name], x, out)
        if new is None:
            return out
        if new.shape != out.shape:
            raise RuntimeError(
                f"site {name}: replacement has shape {tuple(new.shape)}, the model expects "
                f"{tuple(out.shape)}"
            )
        return new

    def end(self) -> None:
        bad = {
            n: (self._captured[n], self._replaced[n])
            for n in self.sites
            if self._captured[n] != 1 or self._replaced[n] != 1
        }
        self._inputs.clear()
        if bad:
            detail = ", ".join(f"{n} (input {c}x, output {r}x)" for n, (c, r) in bad.items())
            raise RuntimeError(
                "the weight swap did not run exactly once per site in this forward pass: "
                f"{detail}. The model's configuration skips or repeats these hook points, so "
                "masks would be silently ignored."
            )
