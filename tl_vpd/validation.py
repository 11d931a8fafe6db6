"""Config fields with declared bounds, and the one validator that walks them.

A field declares its numeric bounds with :func:`bounded`; :func:`validate_fields` checks every
field of a dataclass instance from its annotation (``int``, ``float``, ``bool``, ``str``,
``Literal[...]``, each optionally ``| None``) and those bounds, normalising ints and floats.
Fields whose shape needs more (a dict of patterns, a pair of betas) name their own check.
Messages name the class and field, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union, get_args, get_origin

__all__ = ["bounded", "validate_fields"]


def bounded(default: Any, *, ge: int | float | None = None, gt: int | float | None = None,
            le: int | float | None = None) -> Any:
    """A dataclass field with a default and the numeric bounds the validator enforces.

    Arguments:
        default: the field's default.
        ge: inclusive lower bound.
        gt: exclusive lower bound.
        le: inclusive upper bound.

    Returns:
        A ``dataclasses.field`` carrying the bounds in its metadata.
    """
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("le", le)) if v is not None}
    return dataclasses.field(default=default, metadata={"bounds": bounds})


def validate_fields(obj: Any, *, checks: Mapping[str, Callable[[Any], None]] = {},
                    removed: Mapping[tuple[str, Any], str] = {}) -> None:
    """Check every field of the dataclass instance ``obj``.

    Arguments:
        obj: a (frozen) dataclass instance; normalised values are written back in place.
        checks: field name -> its own check, called instead of the generic one.
        removed: ``(field, value)`` -> message, for Literal options that no longer exist.

    Raises:
        TypeError: a value of the wrong type.
        ValueError: a value out of its bounds or not one of its options.
    """
    hints = _type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.name in checks:
            checks[f.name](obj)
        else:
            _check_field(obj, f, hints[f.name], removed)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    # Evaluated by hand: typing.get_type_hints returns {} for a class marked __no_type_check__.
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        namespace = vars(sys.modules[klass.__module__])
        for name, kind in vars(klass).get("__annotations__", {}).items():
            hints[name] = eval(kind, namespace) if isinstance(kind, str) else kind  # noqa: S307
    return hints


def _check_field(cfg: Any, f: dataclasses.Field, kind: Any,
                 removed: Mapping[tuple[str, Any], str]) -> None:
    """Check (and normalise) one field from its annotation and declared bounds."""
    name, value = f.name, getattr(cfg, f.name)
    where = type(cfg).__name__
    optional = False
    if get_origin(kind) in (Union, types.UnionType):
        args = [a for a in get_args(kind) if a is not type(None)]
        optional = len(args) < len(get_args(kind))
        kind = args[0]
    if get_origin(kind) is Literal:
        options = get_args(kind)
        if isinstance(value, str) and (name, value) in removed:
            raise ValueError(f"{where}.{removed[name, value]}")
        if not isinstance(value, str) or value not in options:
            allowed = ", ".join(repr(o) for o in options)
            raise ValueError(f"{where}.{name} must be one of {allowed} (got {value!r})")
    elif kind is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{where}.{name} must be a bool (got {value!r})")
    elif kind is int:
        _check_int(cfg, name, value, **f.metadata.get("bounds", {}))
    elif kind is float:
        _check_float(cfg, name, value, optional=optional, **f.metadata.get("bounds", {}))
    elif kind is str:
        if value is None and optional:
            return
        if not (isinstance(value, str) and value):
            error = ValueError if isinstance(value, str) else TypeError
            allowed = "None or a non-empty str" if optional else "a non-empty str"
            raise error(f"{where}.{name} must be {allowed} (got {value!r})")
    else:  # a field without a validator would silently accept anything
        raise TypeError(f"{where}.{name}: no validator for its type {kind!r}")


def _check_int(cfg: Any, name: str, value: Any, *, ge: int) -> None:
    where = type(cfg).__name__
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}.{name} must be an int >= {ge} (got {value!r})")
    if value < ge:
        raise ValueError(f"{where}.{name} must be an int >= {ge} (got {value!r})")
    object.__setattr__(cfg, name, int(value))


def _check_float(cfg: Any, name: str, value: Any, *, optional: bool = False,
                 gt: int | float | None = None, ge: int | float | None = None,
                 le: int | float | None = None) -> None:
    where = type(cfg).__name__
    bounds = [f"> {gt:g}"] if gt is not None else []
    bounds += [f">= {ge:g}"] if ge is not None else []
    bounds += [f"<= {le:g}"] if le is not None else []
    allowed = "a finite float " + " and ".join(bounds)
    if optional:
        allowed = f"None or {allowed}"
        if value is None:
            return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}.{name} must be {allowed} (got {value!r})")
    value = float(value)
    in_range = (
        math.isfinite(value)
        and (gt is None or value > gt)
        and (ge is None or value >= ge)
        and (le is None or value <= le)
    )
    if not in_range:
        raise ValueError(f"{where}.{name} must be {allowed} (got {value!r})")
    object.__setattr__(cfg, name, value)
