"""Everything :meth:`tl_vpd.Decomposition.load` checks before it builds anything.

A saved directory (format: :mod:`tl_vpd.io`) is read in this order, and refused at the first
problem with a ``ValueError`` (``FileNotFoundError`` for a missing file) that names the file:

1. ``decomposition.json``: its required keys and their types, a well-formed spec whose ``C``
   agrees with ``site_shapes`` and the fingerprints;
2. the safetensors *headers* (shapes and dtypes only, no data): exactly the expected tensors, of
   the expected shapes, in floating dtypes; the CI function's expected shapes come from building
   it on the ``meta`` device, so a spec claiming ``C=1e9`` allocates nothing;
3. the model: it is of the saved backend (HookedTransformer, TransformerBridge, ...), it has the
   saved sites with the saved shapes, and its weights (every parameter from format version 2)
   match the saved fingerprints; the saved config agrees with the spec;
4. the tensor data: every value finite.

Only then does the loader allocate the decomposition and copy the tensors in, so a refused file
leaves nothing half-built.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tl_vpd import identity, io
from tl_vpd.backends import get_backend
from tl_vpd.config import VPDConfig
from tl_vpd.importance import build_ci_fn
from tl_vpd.sites import Site, resolve_C, select_sites
from tl_vpd.spec import DecompositionSpec, saved_spec_problems

__all__ = ["CheckedContents", "check_savable", "config_disagreements", "read_checked"]

# safetensors' names of the dtypes U, V and the CI parameters may be stored in.
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_REQUIRED = {1: ("spec", "site_shapes", "fingerprint"),
             2: ("spec", "site_shapes", "fingerprint", "model_fingerprint", "config")}
_SHOWN = 5  # differing parameters / tensors named in an error


@dataclass
class CheckedContents:
    """A saved decomposition, checked against its target (see the module docstring).

    Attributes:
        spec: the spec, with the resolved site names.
        config: the training config, when one was saved.
        components: ``{site: (U, V)}`` on the CPU.
        ci_state: the CI function's ``state_dict`` on the CPU.
        history: the training history (empty when saved before histories were).
    """

    spec: DecompositionSpec
    config: VPDConfig | None
    components: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ci_state: dict[str, torch.Tensor]
    history: list[dict] = dataclasses.field(default_factory=list)


def read_checked(path: str | Path, model: nn.Module) -> CheckedContents:
    """Read the saved decomposition at ``path`` and check it against ``model``.

    Arguments:
        path: the directory written by :meth:`tl_vpd.Decomposition.save`.
        model: the target it is to be loaded onto.

    Returns:
        The checked contents; nothing has been allocated on the model's side.

    Raises:
        FileNotFoundError: ``path`` is not a saved decomposition, or one of its files is missing.
        ValueError: a file is truncated, corrupt or edited (the message names it), or ``model``
            is not the decomposition's target.
        TypeError: ``model`` is of a type tl_vpd has no backend for.
    """
    path = Path(path)
    meta = io.read_metadata(path)
    meta_file, comp_file, ci_file = (path / f for f in (io.SPEC_FILE, io.COMPONENTS_FILE,
                                                        io.CI_FILE))
    spec, shapes = _check_metadata(meta, meta_file)
    _check_header(io.read_header(comp_file), _component_shapes(shapes), comp_file)
    _check_header(io.read_header(ci_file), _ci_shapes(spec, shapes, meta_file), ci_file)
    backend = get_backend(model)
    _check_backend(meta.get("backend"), backend.name, model, meta_file)
    found = {s.name: s for s in backend.find_sites(model)}
    _check_sites(found, spec, shapes, meta_file)
    _check_identity(meta, found, model, meta_file)
    config = _check_config(meta.get("config"), spec, found, meta_file)
    history = _check_history(meta.get("history", []), meta_file)
    tensors = io.read_tensors(comp_file)
    _check_finite(tensors, comp_file)
    ci_state = io.read_tensors(ci_file)
    _check_finite(ci_state, ci_file)
    comps = {n: (tensors[f"{n}.U"], tensors[f"{n}.V"]) for n in spec.sites}
    return CheckedContents(spec, config, comps, ci_state, history)


# ------------------------------------------------------------------ decomposition.json
def _check_metadata(meta: Mapping, file: Path
                    ) -> tuple[DecompositionSpec, dict[str, tuple[int, int, int]]]:
    """The spec and ``{site: (d_out, d_in, C)}``, once the metadata is consistent."""
    version = meta["format_version"]
    missing = [k for k in _REQUIRED[version] if k not in meta]
    if missing:
        raise ValueError(f"{file} lacks the key(s) {missing} (format version {version}): it was "
                         "edited or truncated; save the decomposition again")
    problems = saved_spec_problems(meta["spec"])
    if problems:
        raise ValueError(f"{file}: its 'spec' is not valid: {'; '.join(problems)}; it was edited "
                         "or corrupted; save the decomposition again")
    spec = DecompositionSpec.from_dict(meta["spec"])
    sites = list(spec.sites)
    raw = _site_keyed(meta["site_shapes"], sites, "site_shapes", file)
    shapes = {}
    for name in sites:
        v = raw[name]
        if not (isinstance(v, list) and len(v) == 3 and all(_is_count(x) for x in v)):
            raise ValueError(f"{file}: site_shapes[{name!r}] must be [d_out, d_in, C] with "
                             f"ints >= 1, got {v!r}")
        shapes[name] = (int(v[0]), int(v[1]), int(v[2]))
    try:
        Cs = resolve_C(spec.C, sites)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{file}: the spec's C does not fit its sites: {e}") from None
    for name in sites:
        if Cs[name] != shapes[name][2]:
            raise ValueError(f"{file}: the spec's C gives site {name} C={Cs[name]}, but "
                             f"site_shapes says C={shapes[name][2]}: the file was edited; "
                             "save the decomposition again")
    fps = _site_keyed(meta["fingerprint"], sites, "fingerprint", file)
    for name in sites:
        fp = fps[name]
        if not (isinstance(fp, list) and len(fp) == 5 and all(_is_finite(x) for x in fp)):
            raise ValueError(f"{file}: fingerprint[{name!r}] must be 5 finite numbers, got {fp!r}")
        if (fp[0], fp[1]) != shapes[name][:2]:
            raise ValueError(f"{file}: fingerprint[{name!r}] is of a [{fp[0]:g}, {fp[1]:g}] "
                             f"matrix, site_shapes says {list(shapes[name][:2])}: the file was "
                             "edited; save the decomposition again")
    if version >= 2:
        mfp = meta["model_fingerprint"]
        if not isinstance(mfp, dict) or not all(
                isinstance(v, list) and len(v) == 4 and all(_is_finite(x) for x in v)
                for v in mfp.values()):
            raise ValueError(f"{file}: 'model_fingerprint' must map parameter names to 4 finite "
                             "numbers each; it was edited or corrupted")
    if meta.get("config") is not None and not isinstance(meta["config"], dict):
        raise ValueError(f"{file}: 'config' must be a VPDConfig object or null, got a "
                         f"{type(meta['config']).__name__}")
    return spec, shapes


def _site_keyed(value, sites: Sequence[str], key: str, file: Path) -> dict:
    """``value`` when it is a dict keyed by exactly ``sites``."""
    if not isinstance(value, dict):
        raise ValueError(f"{file}: '{key}' must be an object keyed by site, got a "
                         f"{type(value).__name__}")
    missing = [s for s in sites if s not in value]
    extra = sorted(set(value) - set(sites))
    if missing or extra:
        raise ValueError(f"{file}: '{key}' does not match the spec's sites (missing {missing}, "
                         f"not in the spec {extra}): the file was edited; save the "
                         "decomposition again")
    return value


def _is_count(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= 1


def _is_finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ------------------------------------------------------------------ safetensors headers
def _component_shapes(shapes: Mapping[str, tuple[int, int, int]]) -> dict[str, tuple[int, ...]]:
    out = {}
    for name, (d_out, d_in, C) in shapes.items():
        out[f"{name}.U"] = (d_out, C)
        out[f"{name}.V"] = (C, d_in)
    return out


def _ci_shapes(spec: DecompositionSpec, shapes: Mapping[str, tuple[int, int, int]],
               file: Path) -> dict[str, tuple[int, ...]]:
    """The CI function's parameter shapes, from a build on the ``meta`` device (no memory)."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            ci = build_ci_fn(spec.ci_fn, {n: (d_in, C) for n, (_, d_in, C) in shapes.items()},
                             hidden=spec.ci_hidden, d_model=spec.ci_d_model,
                             n_layers=spec.ci_n_layers, n_heads=spec.ci_n_heads)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{file}: its spec does not describe a CI function ({e}); it was "
                         "edited; save the decomposition again") from None
    return {k: tuple(v.shape) for k, v in ci.state_dict().items()}


def _check_header(header: Mapping[str, tuple[str, tuple[int, ...]]],
                  expected: Mapping[str, tuple[int, ...]], file: Path) -> None:
    missing = [k for k in expected if k not in header]
    extra = sorted(set(header) - set(expected))
    if missing or extra:
        raise ValueError(f"{file} does not hold the tensors {io.SPEC_FILE} describes: missing "
                         f"{_few(missing)}, unexpected {_few(extra)}; the files belong to "
                         "different decompositions or were edited; save the decomposition again")
    for key, shape in expected.items():
        dtype, found = header[key]
        if dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{file}: tensor {key} is stored as {dtype}, not a floating dtype "
                             f"({', '.join(_FLOAT_DTYPES)}); the file was edited or corrupted")
        if tuple(found) != tuple(shape):
            raise ValueError(f"{file}: tensor {key} has shape {list(found)}, expected "
                             f"{list(shape)} (from {io.SPEC_FILE}); the file was edited or "
                             "belongs to another decomposition; save the decomposition again")


def _check_finite(tensors: Mapping[str, torch.Tensor], file: Path) -> None:
    for key, t in tensors.items():
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ValueError(f"{file}: tensor {key} holds {bad} NaN or infinite value(s) of "
                             f"{t.numel()}; a decomposition saved from a diverged run cannot be "
                             "loaded; load an earlier checkpoint")


# ------------------------------------------------------------------ the model
def _check_backend(saved: str | None, now: str, model: nn.Module, file: Path) -> None:
    """Refuse a model of another family than the saved target's (e.g. a TransformerBridge for a
    decomposition of a HookedTransformer): the fingerprints name parameters in the saved
    family's layout, and the bridge permutes rotary query/key dimensions (tl_vpd.target_model),
    so even the same weights would not be recognised."""
    if saved is not None and saved != now:
        raise ValueError(f"{file} was saved on a model of the {saved!r} backend; this "
                         f"{type(model).__name__} is a {now!r} model. Loading across backends is "
                         f"not supported: load it onto a {saved} model of the same weights "
                         "(tl_vpd.target_model.load_weights moves the target's weights between "
                         "HookedTransformer and TransformerBridge), or decompose this model")


def _check_sites(found: Mapping[str, Site], spec: DecompositionSpec,
                 shapes: Mapping[str, tuple[int, int, int]], file: Path) -> None:
    missing = [n for n in spec.sites if n not in found]
    if missing:
        raise ValueError(f"this model is not the decomposition's target: it has no site(s) "
                         f"{_few(missing)} (from {file}); its sites: {_few(list(found), 8)}")
    order = [n for n in found if n in shapes]
    if order != list(spec.sites):
        raise ValueError(f"{file}: the spec's sites {list(spec.sites)} are not in the model's "
                         f"forward order {order}: the file was edited; save the decomposition "
                         "again")
    for name in spec.sites:
        site, (d_out, d_in, _) = found[name], shapes[name]
        if (site.d_out, site.d_in) != (d_out, d_in):
            raise ValueError(f"this model is not the decomposition's target: site {name} is "
                             f"[{site.d_out}, {site.d_in}] here, [{d_out}, {d_in}] in {file}")


def _check_identity(meta: Mapping, found: Mapping[str, Site], model: nn.Module,
                    file: Path) -> None:
    sites = list(meta["fingerprint"])
    try:
        io.check_fingerprint(meta["fingerprint"],
                             io.fingerprint({n: found[n].weight for n in sites}))
    except ValueError as e:
        raise ValueError(f"{e} (saved in {file}); load it onto the model it was trained "
                         "on") from None
    if meta["format_version"] < 2:
        return  # version 1 saved the decomposed matrices' fingerprints only
    diff = identity.differing_parameters(meta["model_fingerprint"],
                                         identity.model_fingerprint(model))
    if diff:
        raise ValueError(f"this model is not the decomposition's target: {len(diff)} of its "
                         f"parameters differ from the saved target's ({_few(diff)}; saved in "
                         f"{file}); load it onto the model it was trained on")


def _check_config(cfg: Mapping | None, spec: DecompositionSpec, found: Mapping[str, Site],
                  file: Path) -> VPDConfig | None:
    """The saved config, when it agrees with the spec (its own spec, sites resolved on the
    model)."""
    if cfg is None:
        return None
    try:
        config = VPDConfig.from_dict(cfg)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{file}: its 'config' is not a valid VPDConfig ({e}); it was edited "
                         "or corrupted; save the decomposition again") from None
    diffs = config_disagreements(config, spec, list(found.values()))
    if diffs:
        raise ValueError(f"{file}: the saved config and spec disagree on {'; '.join(diffs)}: the "
                         "file was edited; save the decomposition again (or set 'config' to null "
                         "to load it without its training config)")
    return config


def _check_history(history, file: Path) -> list[dict]:
    """The saved training history: a list of ``{metric: number}`` rows (NaN allowed)."""
    if not (isinstance(history, list) and all(
            isinstance(r, dict) and all(isinstance(v, numbers.Real) for v in r.values())
            for r in history)):
        raise ValueError(f"{file}: its 'history' must be a list of {{metric: number}} rows; it was "
                         "edited or corrupted; save the decomposition again (or delete the key)")
    return [dict(r) for r in history]


def config_disagreements(config: VPDConfig, spec: DecompositionSpec,
                         model_sites: Sequence[Site]) -> list[str]:
    """Where ``config.spec`` and a built decomposition's ``spec`` differ.

    Arguments:
        config: the training config.
        spec: the decomposition's spec (resolved site names).
        model_sites: every site of the model, against which ``config.sites`` is resolved.

    Returns:
        One line per differing field (empty when they agree).
    """
    theirs = config.spec
    diffs = [f"{f.name} (config {getattr(theirs, f.name)!r}, spec {getattr(spec, f.name)!r})"
             for f in dataclasses.fields(spec)
             if f.name != "sites" and getattr(theirs, f.name) != getattr(spec, f.name)]
    try:
        chosen = [s.name for s in select_sites(model_sites, theirs.sites)]
    except ValueError:
        chosen = None
    if chosen != list(spec.sites):
        diffs.append(f"sites (config {theirs.sites!r} selects {_few(chosen or [], 8)}, spec "
                     f"{_few(spec.sites, 8)})")
    return diffs


def check_savable(config: VPDConfig, spec: DecompositionSpec, model_sites: Sequence[Site],
                  path: str | Path) -> None:
    """Refuse to save a decomposition whose ``config`` disagrees with its ``spec`` (the saved
    files would not load: :func:`read_checked` compares them).

    Raises:
        ValueError: naming the differing fields.
    """
    diffs = config_disagreements(config, spec, model_sites)
    if diffs:
        raise ValueError(f"cannot save to {path}: dec.config disagrees with dec.spec on "
                         f"{'; '.join(diffs)}; set dec.config to the config it was trained with, "
                         "or to None")


def _few(names: Sequence[str], n: int = _SHOWN) -> str:
    names = list(names)
    shown = ", ".join(str(x) for x in names[:n])
    return f"[{shown}{', ...' if len(names) > n else ''}]" + (
        f" ({len(names)} in all)" if len(names) > n else "")
