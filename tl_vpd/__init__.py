"""tl_vpd: adVersarial Parameter Decomposition (VPD) for TransformerLens models.

>>> dec = tl_vpd.decompose(model, tl_vpd.VPDConfig(C=64, steps=2000), tokens)
>>> dec.causal_importance(tokens[:4])   # {site: [batch, pos, C]}
"""

from tl_vpd._version import __version__

from tl_vpd.components import SiteComponents
from tl_vpd.config import VPDConfig
from tl_vpd.curves import plot_training_curves
from tl_vpd.decompose import decompose
from tl_vpd.decomposition import CIResult, Decomposition, load
from tl_vpd.sites import Site
from tl_vpd.spec import DecompositionSpec
from tl_vpd.sharing import from_pretrained
from tl_vpd.interrupts import TrainingInterrupted
from tl_vpd.run_dir import RunMismatchError
from tl_vpd.trainer import DivergenceError, NonFiniteLossError, Trainer

__all__ = [
    "CIResult",
    "Decomposition",
    "DecompositionSpec",
    "DivergenceError",
    "NonFiniteLossError",
    "RunMismatchError",
    "Site",
    "SiteComponents",
    "Trainer",
    "TrainingInterrupted",
    "VPDConfig",
    "__version__",
    "decompose",
    "from_pretrained",
    "load",
    "plot_training_curves",
]
