"""Backends: one per family of models, behind the interface in :mod:`tl_vpd.backends.base`."""

from __future__ import annotations

from torch import nn

from tl_vpd.backends.base import Backend, HookSession, SiteFn
from tl_vpd.backends.bridge import BridgeBackend
from tl_vpd.backends.hookpoints import HookPointBackend, HookPointSiteSpec
from tl_vpd.backends.hooked import HookedTransformerBackend

__all__ = [
    "Backend",
    "HookPointBackend",
    "HookPointSiteSpec",
    "HookSession",
    "HookedTransformerBackend",
    "SiteFn",
    "get_backend",
]

_BACKENDS: list[type[Backend]] = [HookPointBackend, HookedTransformerBackend, BridgeBackend]


def get_backend(model: nn.Module) -> Backend:
    """The backend for ``model``; raises naming the model's type when none fits."""
    for cls in _BACKENDS:
        if cls.accepts(model):
            return cls()
    raise TypeError(
        f"tl_vpd has no backend for a {type(model).__module__}.{type(model).__name__}. "
        "Supported: transformer_lens.HookedTransformer (TL 3.x), TransformerBridge (TL >= 3.9), "
        "and HookedRootModules that define `vpd_sites()` (see tl_vpd.toy_models)."
    )
