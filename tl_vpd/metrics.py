"""Deprecated: the toy models' ground-truth metrics moved to :mod:`tl_vpd.toy_models.metrics`."""

import warnings

from tl_vpd.toy_models.metrics import *  # noqa: F403
from tl_vpd.toy_models.metrics import __all__  # noqa: F401

warnings.warn("tl_vpd.metrics moved to tl_vpd.toy_models.metrics", DeprecationWarning,
              stacklevel=2)
