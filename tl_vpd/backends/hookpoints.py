"""Backend for models that declare their sites on TransformerLens ``HookPoint``\\ s.

Toy models (:mod:`tl_vpd.toy_models`) and any user ``HookedRootModule`` can opt in by defining
``vpd_sites(self) -> list[HookPointSiteSpec]``: for each matrix, the hook point whose value is its
input and the hook point whose value is its output ``x @ W.T + bias``. The engine then treats them
exactly like transformer sites (same masks, same components, same checks).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tl_vpd.backends.base import Backend, HookSession
from tl_vpd.sites import Site

__all__ = ["HookPointBackend", "HookPointSiteSpec"]


@dataclass(frozen=True)
class HookPointSiteSpec:
    """A site declared by a model: its matrix ``[d_out, d_in]``, bias, and two hook points."""

    name: str
    get_weight: Callable[[], torch.Tensor]
    get_bias: Callable[[], torch.Tensor | None]
    input_hook: str
    output_hook: str
    layer: int | None = None
    kind: str = ""


class HookPointBackend(Backend):
    name = "hook_points"
    # Sites are declared through getter callables, so there is no parameter to write into; the
    # hooked view and attribution graphs are built (and tested) for HookedTransformer only.
    supports_edit = False
    supports_hooked_view = False
    supports_attribution = False

    def __init__(self):
        self._points: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        return callable(getattr(model, "vpd_sites", None))

    def find_sites(self, model: nn.Module) -> list[Site]:
        specs = model.vpd_sites()
        modules = dict(model.named_modules())
        sites = []
        for spec in specs:
            for hook in (spec.input_hook, spec.output_hook):
                if hook not in modules:
                    raise ValueError(f"site {spec.name}: the model has no module named {hook!r}")
            d_out, d_in = spec.get_weight().shape
            sites.append(Site(spec.name, d_in, d_out,
                              lambda spec=spec: spec.get_weight().detach(),
                              lambda spec=spec: None if spec.get_bias() is None else spec.get_bias().detach(),
                              layer=spec.layer, kind=spec.kind))
        return sites

    def _install(self, model: nn.Module, session: HookSession) -> list:
        points = self._hook_points(model)
        handles = []
        for name in session.sites:
            hook_in, hook_out = points[name]
            handles.append(hook_in.register_forward_hook(
                lambda m, a, out, name=name: session.capture(name, out)))
            handles.append(hook_out.register_forward_hook(
                lambda m, a, out, name=name: session.replace(name, out)))
        return handles

    def _hook_points(self, model: nn.Module) -> dict[str, tuple[nn.Module, nn.Module]]:
        """``{site: (input hook point, output hook point)}``, looked up once per model: a
        toy's masked forward costs less than walking its module tree every pass."""
        cached = self._points.get(model)
        if cached is None:
            modules = dict(model.named_modules())
            cached = {spec.name: (modules[spec.input_hook], modules[spec.output_hook])
                      for spec in model.vpd_sites()}
            self._points[model] = cached
        return cached
