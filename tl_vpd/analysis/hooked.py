"""TransformerLens interop: the decomposition's CI and masks as hook points.

``hooked(dec)`` wraps the target in a :class:`VPDHookedModel`, a ``HookedRootModule`` whose
hook points are the model's own plus three per decomposed site:

* ``{site}.hook_ci`` — the causal importances ``[batch, pos, C]`` (from a clean target pass);
* ``{site}.hook_mask`` — the mask the site runs with ``[batch, pos, C]`` (all ones, or the CI
  with ``mask="ci"``);
* ``{site}.hook_delta_mask`` — the Δ mask ``[batch, pos]`` (ones: Δ on).

They fire in forward order, at the moment the site's weight is swapped, so every TransformerLens
tool works on them::

    hm = hooked(dec)
    logits, cache = hm.run_with_cache(tokens)            # cache["blocks.1.attn.W_Q.hook_ci"]
    hm.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.W_Q.hook_mask", mask_hook([3]))])

A hook that returns a tensor replaces the value (as for any hook point): replacing ``hook_mask``
ablates or rescales subcomponents; with ``mask="ci"`` replacing ``hook_ci`` changes the mask too.
With every mask 1 and Δ on the wrapper's output equals the target's exactly.

The CI comes from a plain pass of the target over the same input, run *before* the user's hooks
are registered by ``run_with_hooks``/``run_with_cache``. Calling the wrapper directly while
hooks are attached with ``add_hook`` runs them in that pass too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from tl_vpd._typing import Float

if TYPE_CHECKING:
    from tl_vpd.decomposition import Decomposition

__all__ = ["VPDHookedModel", "hooked", "mask_hook"]

HOOK_KINDS = ("hook_ci", "hook_mask", "hook_delta_mask")


class VPDHookedModel(HookedRootModule):
    """The target run through the decomposition's weight swap, with CI/mask hook points.

    Arguments:
        dec: the decomposition (of a ``HookedTransformer`` or a ``TransformerBridge``).
        mask: ``"ones"`` (default: the target exactly, until a hook changes a mask) or ``"ci"``
            (each site runs with its causal importances as masks).
    """

    def __init__(self, dec: Decomposition, mask: str = "ones"):
        super().__init__()
        if mask not in ("ones", "ci"):
            raise ValueError(f"mask must be 'ones' or 'ci', got {mask!r}")
        self.model = dec.model  # a submodule, so .to() / .parameters() see it
        object.__setattr__(self, "dec", dec)  # not a submodule: never moved or saved with us
        self.mask = mask
        points = {}
        for site in dec.sites:
            for kind in HOOK_KINDS:
                hp = HookPoint()
                hp.name = f"{site}.{kind}"
                points[hp.name] = hp
        object.__setattr__(self, "vpd_hook_points", points)
        # Not setup(): it would rename the model's own hook points with a "model." prefix. A
        # TransformerBridge of TL 3.9 has no mod_dict; its hook_dict (aliases included) serves.
        own = dec.model.hook_dict
        self.mod_dict = {**getattr(dec.model, "mod_dict", own), **points}
        self.hook_dict = {**own, **points}
        self._pending_ci: dict[str, torch.Tensor] | None = None

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(super().__getattr__("model"), name)  # cfg, tokenizer, to_tokens, ...

    @torch.no_grad()
    def _clean_ci(self, inp) -> dict[str, torch.Tensor]:
        _, xs = self.dec.run_target(inp)
        return self.dec.ci(xs).lower

    @contextlib.contextmanager
    def _ci_first(self, args: Sequence, kwargs: dict) -> Iterator[None]:
        self._pending_ci = self._clean_ci(args[0] if args else kwargs["input"])
        try:
            yield
        finally:
            self._pending_ci = None

    def run_with_hooks(self, *model_args, **kwargs):
        with self._ci_first(model_args, kwargs):
            return super().run_with_hooks(*model_args, **kwargs)

    def run_with_cache(self, *model_args, **kwargs):
        with self._ci_first(model_args, kwargs):
            return super().run_with_cache(*model_args, **kwargs)

    def forward(self, input, *args, **kwargs):
        """``model(input, ...)`` with every decomposed site's weight swapped (see the module)."""
        dec = self.dec
        ci = self._pending_ci if self._pending_ci is not None else self._clean_ci(input)
        comps, hp = dec.components, self.vpd_hook_points

        def fn(site, x, out):
            g = hp[f"{site.name}.hook_ci"](ci[site.name])
            m = hp[f"{site.name}.hook_mask"](torch.ones_like(g) if self.mask == "ones" else g)
            md = hp[f"{site.name}.hook_delta_mask"](torch.ones(m.shape[:-1], dtype=m.dtype, device=m.device))
            if m.shape != g.shape or md.shape != g.shape[:-1]:
                raise ValueError(f"{site.name}: hooks returned a mask of shape {tuple(m.shape)} and "
                                 f"a Δ mask of shape {tuple(md.shape)}; expected {tuple(g.shape)} "
                                 f"and {tuple(g.shape[:-1])}")
            return comps[site.name].masked_output(x, out, m, md)

        sites = [dec.site(s) for s in dec.sites]
        with dec.backend.hooks(self.model, sites, fn):
            return self.model(input, *args, **kwargs)


def hooked(dec: Decomposition, mask: str = "ones") -> VPDHookedModel:
    """Wrap ``dec.model`` with ``{site}.hook_ci``/``hook_mask``/``hook_delta_mask`` hook points."""
    if not dec.backend.supports_hooked_view:
        raise NotImplementedError(f"hooked() wraps targets with TransformerLens hook points; this "
                                  f"decomposition's backend is {dec.backend.name!r}")
    return VPDHookedModel(dec, mask)


def mask_hook(cs: Sequence[int], value: float = 0.0) -> Callable:
    """A hook for ``{site}.hook_mask`` that sets subcomponents ``cs`` to ``value`` (0 ablates)."""
    idx = list(cs)

    def hook(mask: Float[torch.Tensor, "*lead C"], hook) -> Float[torch.Tensor, "*lead C"]:
        mask = mask.clone()
        mask[..., idx] = value
        return mask

    return hook
