"""Toy targets with known ground truth (SPD paper §3) and the cancellation toy (a test of the
masking criterion: mechanisms that cancel on every input).

Every target is a ``transformer_lens.hook_points.HookedRootModule`` with a hook point on each
side of each decomposed matrix and a ``vpd_sites()`` method, so it goes through exactly the
engine a language model does (:func:`tl_vpd.decompose`, :class:`tl_vpd.Decomposition`).

============================  ==========================  =============================================
experiment                    target                      sites
============================  ==========================  =============================================
``tms_5-2``, ``tms_40-10``    :class:`TMS`                ``linear1``, ``linear2``
``tms_5-2-id``, ``…-id``      ``TMS(identity=True)``      ``linear1``, ``hidden_layers.0``, ``linear2``
``resid_mlp1/2/3``            :class:`ResidualMLP`        ``blocks.{l}.mlp.W_in``, ``blocks.{l}.mlp.W_out``
``cancellation``              :class:`CancellationToy`    ``linear``
============================  ==========================  =============================================

>>> target, dec = reproduce("tms_5-2", method="spd")          # train the target, decompose it
>>> target = train_tms(5, 2, seed=1)                            # or build the pieces yourself
>>> dec = tl_vpd.decompose(target, toy_config("tms_5-2"), tms_data(5))
"""

from tl_vpd.toy_models.cancellation import (
    CancellationData,
    CancellationToy,
    decompose_cancellation,
    ground_truth_components,
    pair_indices,
)
from tl_vpd.toy_models.data import SparseFeatures, one_hot_inputs
from tl_vpd.toy_models.reproduce import EXPERIMENTS, ToyExperiment, reproduce, toy_config
from tl_vpd.toy_models.resid_mlp import (
    ResidualMLP,
    resid_mlp_data,
    resid_mlp_labels,
    train_resid_mlp,
)
from tl_vpd.toy_models.tms import TMS, tms_data, train_tms, with_identity

__all__ = [
    "EXPERIMENTS",
    "CancellationData",
    "CancellationToy",
    "ResidualMLP",
    "SparseFeatures",
    "TMS",
    "ToyExperiment",
    "decompose_cancellation",
    "ground_truth_components",
    "one_hot_inputs",
    "pair_indices",
    "reproduce",
    "resid_mlp_data",
    "resid_mlp_labels",
    "tms_data",
    "toy_config",
    "train_resid_mlp",
    "train_tms",
    "with_identity",
]
