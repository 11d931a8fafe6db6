"""Reading and writing config files: YAML (with ``5e-5`` read as a float) and JSON.

YAML 1.1, which PyYAML follows, reads ``5e-5`` and ``1e7`` as strings because they have no dot;
every config file in the package is read with :func:`read_yaml`, which reads them as floats.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tl_vpd import atomic

__all__ = ["CONFIG_SUFFIXES", "read_config_file", "read_yaml", "write_config_file", "write_yaml"]

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``5e-5`` and ``1e7`` as floats (YAML 1.1 requires a dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file safely, reading ``5e-5`` and ``1e7`` as floats.

    Arguments:
        path: the file.

    Returns:
        The parsed document (a dict, list or scalar; ``None`` for an empty file).
    """
    return yaml.load(Path(path).read_text(), Loader=_Loader)


def write_yaml(obj: Any, path: str | Path) -> None:
    """Write ``obj`` (plain dicts, lists and scalars) as YAML, keeping the dict order.

    Arguments:
        obj: the document.
        path: the destination file.
    """
    atomic.write_text(path, yaml.safe_dump(obj, sort_keys=False))


def read_config_file(path: str | Path) -> Mapping[str, Any]:
    """A mapping read from a ``.yaml``/``.yml`` (via :func:`read_yaml`) or ``.json`` file.

    Arguments:
        path: the file; the suffix picks the format.

    Returns:
        The mapping. A file that holds anything else raises ``ValueError``.
    """
    path = Path(path)
    if _config_suffix(path) == ".json":
        data = json.loads(path.read_text())
    else:
        data = read_yaml(path)
    if not isinstance(data, Mapping):
        raise ValueError(
            f"{path} must hold a mapping of config fields (got {type(data).__name__})"
        )
    return data


def write_config_file(data: Mapping[str, Any], path: str | Path) -> None:
    """Write a mapping to a ``.yaml``/``.yml`` or ``.json`` file.

    Arguments:
        data: JSON- and YAML-safe values.
        path: the destination; the suffix picks the format.
    """
    path = Path(path)
    if _config_suffix(path) == ".json":
        atomic.write_text(path, json.dumps(dict(data), indent=2) + "\n")
    else:
        write_yaml(dict(data), path)


def _config_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise ValueError(
            f"config file {str(path)!r} must end in one of {', '.join(CONFIG_SUFFIXES)} "
            f"(got {suffix or 'no suffix'!r})"
        )
    return suffix
