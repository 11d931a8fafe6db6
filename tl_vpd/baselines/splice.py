"""Where a per-layer MLP replacement reads and writes, and the hooks that read or replace there.

A transcoder stands for the function from an MLP's input to ``hook_mlp_out``. Hook map (``L`` is
the layer):

================== ============================================ =========================
model              MLP input read at                            output replaced at
================== ============================================ =========================
HookedTransformer  ``args[0]`` of ``blocks.L.mlp`` (pre-hook)    ``blocks.L.hook_mlp_out``
TransformerBridge  ``blocks.L.mlp.hook_in``                     ``blocks.L.hook_mlp_out``
================== ============================================ =========================

On HookedTransformer the MLP module's own argument is the only place its real input appears:
TL 3 fires ``ln2.hook_normalized`` before the norm's affine map. In sandwich / post-norm models
``hook_mlp_out`` comes after the extra norm, so there the replacement stands for norm ∘ MLP;
training reads the same two points, so it learns exactly what is replaced.

Every forward inside :func:`mlp_hooks` is checked: each hooked layer's input must be read and its
output replaced exactly once, in that order, or it raises (a model whose forward skips or repeats
these hook points is refused rather than spliced silently wrong).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tl_vpd.backends.bridge import BridgeBackend
from tl_vpd.backends.hooked import HookedTransformerBackend

__all__ = ["MLPPoint", "capture_mlps", "mlp_hooks", "mlp_points", "spliced"]

# ``on_output(layer, mlp_input, mlp_output)`` returns the replacement output, or None to keep it.
OnOutput = Callable[[int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


@dataclass(frozen=True)
class MLPPoint:
    """One MLP's read and write points.

    Attributes:
        layer: the block index.
        input_name: where the MLP's input is read (a hook name, or ``blocks.L.mlp (input)``).
        output_name: the hook point whose value is replaced (``blocks.L.hook_mlp_out``).
        input_module: the module whose forward carries the input.
        input_is_argument: the input is ``args[0]`` of ``input_module`` (a forward pre-hook),
            else its output (a hook point's forward hook).
        output_module: the hook point module of ``output_name``.
    """

    layer: int
    input_name: str
    output_name: str
    input_module: nn.Module
    input_is_argument: bool
    output_module: nn.Module


def mlp_points(model: nn.Module, layers: Sequence[int] | None = None) -> list[MLPPoint]:
    """The MLP read/write points of ``model`` (every layer, or ``layers``).

    Raises:
        TypeError: ``model`` is neither a HookedTransformer nor a TransformerBridge.
        ValueError: the model has no MLPs, a layer does not exist, or a bridge lacks a hook
            point (naming it).
    """
    hooked = HookedTransformerBackend.accepts(model)
    if not hooked and not BridgeBackend.accepts(model):
        raise TypeError(f"transcoders splice into a transformer_lens HookedTransformer or "
                        f"TransformerBridge; got a {type(model).__module__}.{type(model).__name__}")
    cfg = model.cfg
    if getattr(cfg, "attn_only", False):
        raise ValueError("this model is attention-only (cfg.attn_only): it has no MLP to replace")
    n_layers = cfg.n_layers
    layers = list(range(n_layers)) if layers is None else [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad or not layers or len(set(layers)) != len(layers):
        raise ValueError(f"layers must be distinct block indices in [0, {n_layers}); got {layers}")
    hook_dict = model.hook_dict
    points = []
    for layer in layers:
        out_name = f"blocks.{layer}.hook_mlp_out"
        if hooked:
            in_name, in_module, is_arg = f"blocks.{layer}.mlp (input)", model.blocks[layer].mlp, True
        else:
            in_name, in_module, is_arg = f"blocks.{layer}.mlp.hook_in", hook_dict.get(
                f"blocks.{layer}.mlp.hook_in"), False
        for name, module in ((in_name, in_module), (out_name, hook_dict.get(out_name))):
            if module is None:
                raise ValueError(f"this {type(model).__name__} has no hook point {name!r}, so its "
                                 f"block {layer} MLP cannot be replaced (is blocks.{layer}.mlp a "
                                 "mixture of experts or another non-standard MLP?)")
        points.append(MLPPoint(layer, in_name, out_name, in_module, is_arg, hook_dict[out_name]))
    return points


@contextlib.contextmanager
def mlp_hooks(model: nn.Module, points: Sequence[MLPPoint], on_output: OnOutput) -> Iterator[None]:
    """Inside the block, every forward of ``model`` calls ``on_output(layer, x, y)`` at each
    point's output hook (``x`` the MLP input of that forward, ``y`` the hook's value) and uses its
    return value, if not None, as the hook's new value. Hooks are removed on exit, even on error."""
    pending: dict[int, torch.Tensor] = {}
    done: dict[int, int] = {}

    def reset(*_):
        pending.clear()
        done.clear()

    def read(point: MLPPoint, x: torch.Tensor) -> None:
        if point.layer in pending or done.get(point.layer):
            raise RuntimeError(f"{point.input_name} fired twice in one forward; this model's MLP "
                               "cannot be replaced by a per-layer transcoder")
        pending[point.layer] = x

    def write(point: MLPPoint, y: torch.Tensor):
        x = pending.pop(point.layer, None)
        if x is None:
            raise RuntimeError(f"{point.output_name} fired before (or without) "
                               f"{point.input_name}; this model's MLP cannot be spliced")
        done[point.layer] = done.get(point.layer, 0) + 1
        new = on_output(point.layer, x, y)
        if new is not None and new.shape != y.shape:
            raise ValueError(f"the replacement of {point.output_name} has shape "
                             f"{tuple(new.shape)}, expected {tuple(y.shape)}")
        return None if new is None else new.to(y.dtype)

    def check(*_):
        missing = [p.output_name for p in points if done.get(p.layer) != 1]
        if missing:
            raise RuntimeError(f"in this forward {missing} did not fire exactly once after the "
                               "MLP input; the splice would be silently wrong")

    handles = [model.register_forward_pre_hook(reset), model.register_forward_hook(check)]
    try:
        for p in points:
            if p.input_is_argument:
                handles.append(p.input_module.register_forward_pre_hook(
                    lambda m, args, p=p: read(p, args[0])))
            else:
                handles.append(p.input_module.register_forward_hook(
                    lambda m, args, out, p=p: read(p, out)))
            handles.append(p.output_module.register_forward_hook(
                lambda m, args, out, p=p: write(p, out)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture_mlps(model: nn.Module, points: Sequence[MLPPoint]
                 ) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Yields a dict that each forward inside the block fills with ``{layer: (mlp_input,
    hook_mlp_out)}`` (detached); the model's outputs are unchanged."""
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(layer, x, y):
        seen[layer] = (x.detach(), y.detach())

    with mlp_hooks(model, points, record):
        yield seen


@contextlib.contextmanager
def spliced(model: nn.Module, replacements: Mapping[int, Callable[[torch.Tensor], torch.Tensor]],
            points: Sequence[MLPPoint] | None = None) -> Iterator[None]:
    """Run ``model`` with ``hook_mlp_out`` of each layer in ``replacements`` replaced by
    ``fn(mlp_input)`` (``fn`` maps ``[batch, pos, d_model]`` to the same shape; a transcoder, or
    any function). The model is restored on exit.

    Arguments:
        model: a HookedTransformer or TransformerBridge.
        replacements: ``{layer: fn}``.
        points: the layers' points (default: :func:`mlp_points` of ``replacements``' layers).
    """
    points = mlp_points(model, sorted(replacements)) if points is None else points
    with mlp_hooks(model, points, lambda layer, x, y: replacements[layer](x)):
        yield
