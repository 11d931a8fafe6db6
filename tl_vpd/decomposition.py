"""The :class:`Decomposition`: every site's subcomponents plus the causal-importance function.

It holds a reference to the target model (never a submodule: the model is frozen, never
trained, never saved with the decomposition) and swaps masked weights in through the model's
backend only inside :meth:`Decomposition.masked`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import tl_vpd.analysis as analysis
from tl_vpd import identity, io, load_checks, sharing
from tl_vpd._typing import Float, Num
from tl_vpd._version import __version__
from tl_vpd.backends import Backend, get_backend
from tl_vpd.components import DTYPES, SiteComponents, warn_if_coarser
from tl_vpd.config import VPDConfig
from tl_vpd.evaluate import evaluate
from tl_vpd.importance import CausalImportance, build_ci_fn, lower_leaky_sigmoid
from tl_vpd.sites import Site, resolve_C, select_sites
from tl_vpd.spec import SPEC_DEFAULTS, DecompositionSpec

__all__ = ["CIResult", "Decomposition", "load"]

@dataclass
class CIResult:
    """Causal importances of one batch: the pre-activations and (computed on first use) the
    lower-leaky view used for masks (``[*lead, C]`` per site). The minimality losses take the
    upper-leaky view of ``pre`` themselves (:func:`tl_vpd.importance.upper_leaky_sigmoid`)."""

    pre: dict[str, Float[torch.Tensor, "*lead _C"]]
    alpha: float

    @functools.cached_property
    def lower(self) -> dict[str, Float[torch.Tensor, "*lead _C"]]:
        return {k: lower_leaky_sigmoid(z, self.alpha) for k, z in self.pre.items()}


class Decomposition(nn.Module):
    """Rank-1 subcomponents ``U``, ``V`` for each site of a target model, and a CI function.

    Build one with :meth:`from_model` or :meth:`from_spec` (untrained) or
    :func:`tl_vpd.decompose` (trained).

    Attributes:
        spec: the :class:`~tl_vpd.spec.DecompositionSpec` it was built from (resolved site names).
        config: the :class:`~tl_vpd.VPDConfig` it is trained with (``None`` when built by hand).
        sites: decomposed site names, in forward order.
        components: ``{site: SiteComponents}`` with ``.U [d_out, C]``, ``.V [C, d_in]``,
            ``.delta [d_out, d_in]``.
        ci_fn: the causal-importance network.
        model: the target (not a submodule; not saved).
        history: the metrics :func:`tl_vpd.decompose` logged (saved; :mod:`tl_vpd.curves`).
    """

    def __init__(self, model: nn.Module, backend: Backend, sites: Sequence[Site],
                 components: Mapping[str, SiteComponents], ci_fn: CausalImportance,
                 spec: DecompositionSpec, config: VPDConfig | None = None):
        super().__init__()
        object.__setattr__(self, "model", model)
        self.backend = backend
        self._sites = {s.name: s for s in sites}
        self._components = nn.ModuleDict({_key(n): c for n, c in components.items()})
        self.ci_fn = ci_fn
        self.spec = spec  # with the resolved site names
        self._masking = False  # inside a masked() block (they do not nest)
        self.config = config  # the VPDConfig it is trained with, when built by decompose()
        self.history: list[dict] = []

    # ------------------------------------------------------------- construction
    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        C: int | Mapping[str, int],
        sites: str | Sequence[str] | None = None,
        seed: int = SPEC_DEFAULTS["seed"],
        *,
        ci_fn: str = SPEC_DEFAULTS["ci_fn"],
        ci_hidden: int = SPEC_DEFAULTS["ci_hidden"],
        ci_d_model: int = SPEC_DEFAULTS["ci_d_model"],
        ci_n_layers: int = SPEC_DEFAULTS["ci_n_layers"],
        ci_n_heads: int = SPEC_DEFAULTS["ci_n_heads"],
        init: str = SPEC_DEFAULTS["init"],
        leaky_alpha: float = SPEC_DEFAULTS["leaky_alpha"],
        dtype: str = SPEC_DEFAULTS["dtype"],
    ) -> Decomposition:
        """An untrained decomposition of ``model`` (the fields of :class:`DecompositionSpec`).

        Arguments:
            model: a ``HookedTransformer`` or a model with ``vpd_sites()`` (toy models).
            C: subcomponents per site: an int, or ``{site_pattern: int}``.
            sites: glob patterns of the sites to decompose (default: every attention and MLP
                matrix).
            seed: seeds U, V and the CI function's initialisation.
            ci_fn: ``mlp``, ``vector_mlp``, ``shared_mlp``, ``global_mlp`` or
                ``global_transformer`` (see :mod:`tl_vpd.importance`).
            ci_hidden: width of the per-site / per-subcomponent CI MLPs.
            ci_d_model: width of the global CI network.
            ci_n_layers: blocks of the global CI transformer.
            ci_n_heads: heads of the global CI transformer.
            init: ``"random"``, ``"fan_in"`` or ``"svd"``.
            leaky_alpha: slope of the leaky hard sigmoids.
            dtype: dtype of U, V and the CI function (one coarser than the model's weights
                warns: the swap is then exact only up to its rounding).

        Returns:
            The decomposition; with all masks 1 it reproduces the model exactly.
        """
        spec = DecompositionSpec(
            C=C if isinstance(C, int) else dict(C), sites=sites, seed=seed, ci_fn=ci_fn,
            ci_hidden=ci_hidden, ci_d_model=ci_d_model, ci_n_layers=ci_n_layers,
            ci_n_heads=ci_n_heads, init=init, leaky_alpha=leaky_alpha, dtype=dtype)
        return cls.from_spec(model, spec)

    @classmethod
    def from_spec(cls, model: nn.Module, spec: DecompositionSpec,
                  config: VPDConfig | None = None) -> Decomposition:
        """An untrained decomposition of ``model`` with the shape ``spec``.

        Arguments:
            model: a ``HookedTransformer`` or a model with ``vpd_sites()`` (toy models).
            spec: the decomposition's shape; ``spec.sites`` may hold glob patterns.
            config: the training config, when the decomposition is built for training
                (``config.spec`` is then the usual ``spec``); stored as ``.config``.

        Returns:
            The decomposition; its ``.spec`` holds the resolved site names. A ``UserWarning``
            says when ``spec.dtype`` is coarser than the model's weights.
        """
        if spec.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {spec.dtype!r}")
        dtype = DTYPES[spec.dtype]
        backend = get_backend(model)
        chosen = select_sites(backend.find_sites(model), spec.sites)
        if not chosen:
            raise ValueError("the model has no decomposable sites")
        warn_if_coarser(dtype, chosen)
        Cs = resolve_C(spec.C, [s.name for s in chosen])
        gen = torch.Generator().manual_seed(spec.seed)
        comps = {s.name: SiteComponents(s, Cs[s.name], spec.init, gen, dtype) for s in chosen}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            ci = build_ci_fn(spec.ci_fn, {s.name: (s.d_in, Cs[s.name]) for s in chosen},
                             hidden=spec.ci_hidden, d_model=spec.ci_d_model,
                             n_layers=spec.ci_n_layers, n_heads=spec.ci_n_heads)
        device = next(iter(comps.values())).W.device
        ci = ci.to(device=device, dtype=dtype)
        resolved = spec.replace(sites=tuple(s.name for s in chosen))
        return cls(model, backend, chosen, comps, ci, resolved, config)

    # ------------------------------------------------------------- access
    @property
    def sites(self) -> list[str]:
        return list(self._sites)

    @property
    def components(self) -> dict[str, SiteComponents]:
        return {n: self._components[_key(n)] for n in self._sites}

    def site(self, name: str) -> Site:
        if name not in self._sites:
            raise KeyError(f"{name!r} is not a decomposed site; sites: {self.sites}")
        return self._sites[name]

    @property
    def leaky_alpha(self) -> float:
        """Slope of the leaky hard sigmoids (``spec.leaky_alpha``)."""
        return self.spec.leaky_alpha

    def target_weight(self, site: str) -> Float[torch.Tensor, "d_out d_in"]:
        """The target's matrix ``W`` of ``site`` (``[d_out, d_in]``)."""
        return self.site(site).weight

    # ------------------------------------------------------------- forward passes
    def run_target(
        self, inputs: Num[torch.Tensor, "batch *in_rest"], **kwargs
    ) -> tuple[Float[torch.Tensor, "batch *out_rest"], dict[str, Float[torch.Tensor, "batch *_x"]]]:
        """One plain forward of the target, capturing every site's input.

        Returns:
            ``(output, {site: input})``; inputs are ``[..., d_in]`` (``[..., h, d_in]`` for
            per-head sites).
        """
        captured: dict[str, torch.Tensor] = {}

        def fn(site, x, out):
            captured[site.name] = x
            return None

        with self.backend.hooks(self.model, list(self._sites.values()), fn):
            out = self.model(inputs, **kwargs)
        return out, captured

    def ci(self, site_inputs: Mapping[str, Float[torch.Tensor, "batch *_x"]]) -> CIResult:
        """Causal importances from captured site inputs (with gradient to the CI function).

        Arguments:
            site_inputs: ``{site: input}`` as :meth:`run_target` captures them, ``[*lead, d_in]``
                (``[*lead, h, d_in]`` for per-head sites).

        Returns:
            The pre-activations and the lower-leaky causal importances, ``[*lead, C]`` per site.
        """
        dtype = next(self.ci_fn.parameters()).dtype
        xs = {}
        for n in self._sites:
            x = site_inputs[n].to(dtype)
            xs[n] = x.mean(-2) if self._sites[n].per_head_input else x
        acts = ({n: self.components[n].inner_acts(xs[n]) for n in self._sites}
                if self.ci_fn.uses_inner_acts else {})
        return CIResult(self.ci_fn(xs, acts), self.spec.leaky_alpha)

    @torch.no_grad()
    def causal_importance(self, inputs) -> dict[str, Float[torch.Tensor, "... C"]]:
        """``{site: g}`` with ``g ∈ [0, 1]`` of shape ``[batch, pos, C]`` (``[batch, C]`` for
        toy models) for a batch of tokens (or toy inputs)."""
        _, xs = self.run_target(inputs)
        return self.ci(xs).lower

    @contextlib.contextmanager
    def masked(
        self,
        masks: Mapping[str, torch.Tensor],
        delta_masks: Mapping[str, torch.Tensor] | None = None,
        *,
        impl: str = "factorized",
    ) -> Iterator[None]:
        """Run the model with per-token masked weights inside the block.

        Arguments:
            masks: ``{site: [*lead, C]}``, ``*lead`` the leading shape of the site's input
                (``[batch, pos]`` for transformers). Sites not in ``masks`` keep their weight.
            delta_masks: ``{site: [*lead]}``; a missing site's Δ mask is 1 (Δ on).
            impl: ``"factorized"`` (fast, default) or ``"materialized"`` (a slow reference that
                builds ``W'[b,t]`` for every token; for tests and benchmarks).

        The model is restored when the block exits, even on error.
        """
        unknown = (set(masks) | set(delta_masks or ())) - set(self._sites)
        if unknown:
            raise KeyError(f"masks given for sites that are not decomposed: {sorted(unknown)}")
        orphans = set(delta_masks or ()) - set(masks)
        if orphans:
            raise ValueError(f"delta_masks given for sites without a mask: {sorted(orphans)}; a "
                             "site without a mask runs with its original weight, so its Δ mask "
                             "would be ignored (give it a mask of ones to mask Δ alone)")
        if self._masking:
            raise RuntimeError("dec.masked() blocks do not nest (the inner block's hooks would "
                               "stack on the outer's): combine the masks into one call, e.g. "
                               "multiply them elementwise")
        if impl not in ("factorized", "materialized"):
            raise ValueError(f"impl must be 'factorized' or 'materialized', got {impl!r}")
        delta_masks = delta_masks or {}
        comps = self.components

        def fn(site, x, out):
            m = masks.get(site.name)
            if m is None:
                return None
            comp = comps[site.name]
            lead = x.shape[:-2] if site.per_head_input else x.shape[:-1]
            if m.shape != (*lead, comp.C):
                raise ValueError(f"masks[{site.name!r}] has shape {tuple(m.shape)}, expected "
                                 f"{(*lead, comp.C)} (the input's leading shape + C)")
            md = delta_masks.get(site.name)
            if md is not None and md.shape != lead:
                raise ValueError(f"delta_masks[{site.name!r}] has shape {tuple(md.shape)}, "
                                 f"expected {tuple(lead)}")
            if impl == "materialized":
                return comp.materialized_output(x, m, md).to(out.dtype)
            return comp.masked_output(x, out, m, md)

        self._masking = True
        try:
            with self.backend.hooks(self.model, [self._sites[n] for n in masks], fn):
                yield
        finally:
            self._masking = False

    def run_masked(self, inputs, masks, delta_masks=None, **kwargs) -> torch.Tensor:
        """``model(inputs)`` with masked weights (see :meth:`masked`)."""
        with self.masked(masks, delta_masks, impl=kwargs.pop("impl", "factorized")):
            return self.model(inputs, **kwargs)

    def evaluate(self, data, **kwargs):
        """CE/KL table, L0 and alive counts, adversarial KL: see :func:`tl_vpd.evaluate.evaluate`."""
        return evaluate(self, data, **kwargs)

    # ------------------------------------------------------------- analysis (tl_vpd.analysis)
    def subcomponent(self, site: str, c: int, data=None, **kwargs):
        """Inspect one subcomponent: :func:`tl_vpd.analysis.subcomponent`."""
        return analysis.subcomponent(self, site, c, data, **kwargs)

    def harvest(self, data, **kwargs):
        """Every subcomponent's density and top contexts: :func:`tl_vpd.analysis.harvest`."""
        return analysis.harvest(self, data, **kwargs)

    def edit(self, edits, heldout=None, **kwargs):
        """The edited copy (:func:`tl_vpd.analysis.edit`); with ``heldout``, :func:`tl_vpd.analysis.evaluate_edit`."""
        return analysis.edit(self, edits) if heldout is None else analysis.evaluate_edit(self, edits, heldout, **kwargs)

    def hooked(self, mask: str = "ones"):
        """The target with ``{site}.hook_ci`` / ``hook_mask`` hook points: :func:`tl_vpd.analysis.hooked`."""
        return analysis.hooked(self, mask)

    def ablation_effect(self, tokens, ablate, **kwargs):
        """Each head's attention by offset with ``ablate`` removed: :func:`tl_vpd.analysis.ablation_effect`."""
        return analysis.ablation_effect(self, tokens, ablate, **kwargs)

    def attribution_graph(self, tokens, target=None, **kwargs):
        """One prompt's subcomponent attribution graph: :func:`tl_vpd.analysis.attribution_graph`."""
        return analysis.attribution_graph(self, tokens, target, **kwargs)

    # ------------------------------------------------------------- persistence (format: tl_vpd.io)
    def save(self, path: str | Path) -> Path:
        """Save to the directory ``path`` (format: :mod:`tl_vpd.io`), return it; reload with
        :meth:`load`. ``ValueError`` if ``self.config`` disagrees with ``self.spec``."""
        comps = self.components
        if self.config is not None:
            load_checks.check_savable(self.config, self.spec, self.backend.find_sites(self.model), path)
        meta = {
            "tl_vpd_version": __version__,
            "backend": self.backend.name,
            "target_type": type(self.model).__name__,
            "spec": self.spec.to_dict(),
            "site_shapes": {n: [c.d_out, c.d_in, c.C] for n, c in comps.items()},
            "fingerprint": io.fingerprint({n: self.target_weight(n) for n in self.sites}),
            "model_fingerprint": identity.model_fingerprint(self.model),
            "config": None if self.config is None else self.config.to_dict(),
            "history": self.history,
        }
        return io.write_decomposition(path, meta, {n: (c.U, c.V) for n, c in comps.items()},
                                      self.ci_fn.state_dict())

    @classmethod
    def load(cls, path: str | Path, model: nn.Module) -> Decomposition:
        """Restore a decomposition saved with :meth:`save` onto its target ``model``; every file
        is checked first (:mod:`tl_vpd.load_checks`), so an error leaves nothing half-loaded.

        Raises:
            FileNotFoundError: ``path`` is not a saved decomposition, or lacks one of its files.
            ValueError: a file is truncated, corrupt or edited (the message names it), or
                ``model`` is not the target it was trained on (different sites, shapes or
                parameters).
            TypeError: tl_vpd has no backend for ``model``.
        """
        contents = load_checks.read_checked(path, model)
        dec = cls.from_spec(model, contents.spec, contents.config)
        with torch.no_grad():
            for name, (U, V) in contents.components.items():
                dec.components[name].U.copy_(U)
                dec.components[name].V.copy_(V)
        dec.ci_fn.load_state_dict(contents.ci_state)
        dec.history = contents.history
        return dec

    def save_pretrained(self, path: str | Path, **kwargs) -> Path:
        """Save in the Hub layout (+ README.md, target.json): :func:`tl_vpd.sharing.save_pretrained`."""
        return sharing.save_pretrained(self, path, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Upload to a Hub repository: :func:`tl_vpd.sharing.push_to_hub`."""
        return sharing.push_to_hub(self, repo_id, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, model: nn.Module | None = None, **kwargs):
        """Load from a directory or Hub repository: :func:`tl_vpd.sharing.from_pretrained`."""
        return sharing.load_as(cls, name_or_path, model, **kwargs)

    # ------------------------------------------------------------- display
    def __repr__(self) -> str:
        comps = self.components
        total = sum(c.C for c in comps.values())
        n_par = sum(p.numel() for p in self.parameters())
        lines = [f"Decomposition of {type(self.model).__name__} ({self.backend.name}): "
                 f"{len(comps)} sites, {total} subcomponents, ci_fn={self.spec.ci_fn}, "
                 f"{n_par:,} trainable parameters"]
        for n, c in list(comps.items())[:12]:
            lines.append(f"  {n:<28} W[{c.d_out}, {c.d_in}]  C={c.C}")
        if len(comps) > 12:
            lines.append(f"  ... {len(comps) - 12} more")
        return "\n".join(lines)


def _key(name: str) -> str:
    return name.replace(".", "__")


def load(path: str | Path, model: nn.Module) -> Decomposition:
    """``tl_vpd.load``: :meth:`Decomposition.load`."""
    return Decomposition.load(path, model)
