"""Baselines that VPD is compared against: per-layer TopK MLP transcoders (PLTs).

>>> tcs = train_transcoders(model, tokens, n_latents=512, k=16, steps=2000)
>>> evaluate_transcoders(model, tcs, val_tokens)   # CE / KL / L0 / alive, as dec.evaluate gives

:mod:`~tl_vpd.baselines.transcoder` (the architecture), :mod:`~tl_vpd.baselines.splice` (the
hooks that read an MLP's input and replace ``hook_mlp_out``), :mod:`~tl_vpd.baselines.train`,
:mod:`~tl_vpd.baselines.evaluate`, :mod:`~tl_vpd.baselines.splitting` (feature splitting between
dictionaries of two sizes).
"""

from tl_vpd.baselines.evaluate import TranscoderReport, evaluate_transcoders
from tl_vpd.baselines.splice import MLPPoint, capture_mlps, mlp_points, spliced
from tl_vpd.baselines.splitting import mean_split_fraction, split_fraction
from tl_vpd.baselines.train import Transcoders, train_transcoders
from tl_vpd.baselines.transcoder import Transcoder

__all__ = [
    "MLPPoint",
    "Transcoder",
    "TranscoderReport",
    "Transcoders",
    "capture_mlps",
    "evaluate_transcoders",
    "mean_split_fraction",
    "mlp_points",
    "spliced",
    "split_fraction",
    "train_transcoders",
]
