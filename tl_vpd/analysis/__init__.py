"""Analysis of a trained decomposition: inspection, attention mechanisms, editing, attribution.

=================== ==========================================================================
module              what
=================== ==========================================================================
``subcomponents``   :func:`subcomponent` (``dec.subcomponent``) cards, dataset-level
                    :func:`harvest` (density, mean CI, top contexts), :func:`head_fractions`
``selection``       :func:`parse_selection`: the one format for "these subcomponents (at these
                    mask values)" that every function below accepts
``attention``       attention patterns and offset profiles, :func:`prev_token_scores`,
                    :func:`ablation_masks` (every ablation's masks), :func:`ablation_effect`
``qk``              static Q·K interactions of query and key subcomponents, with rotary
``qk_data``         :func:`qk_data_interactions`: the data-dependent Q·K interaction strength
                    of every (query, key) pair on real prompts
``ov``              :func:`ov_circuits`: what value subcomponents write through each head,
                    composed with output subcomponents, and the tokens they promote
``routing``         :func:`boundary_routing`: each head's attention on boundary tokens, with
                    and without an ablation
``finders``         the previous-token and syntax-boundary finders
``edit``            :func:`edit` (``dec.edit``): a copy of the target without chosen
                    subcomponents
``edit_eval``       :func:`evaluate_edit` (``dec.edit(..., heldout=...)``): off- and
                    on-target KL, top-1 changes and the most changed predictions of an edit
``hooked``          :func:`hooked` (``dec.hooked``): ``{site}.hook_ci`` / ``hook_mask`` hook
                    points for ``run_with_hooks`` / ``run_with_cache``
``attribution``     :func:`attribution_graph` between subcomponents for one prompt
``pruning``         :func:`optimize_ci` (post-hoc CI for one prediction, adversarially
                    faithful), :func:`pruned_attribution_graph`
``dataset_attribution``
                    :func:`dataset_attributions`: normalised attributions over a dataset
``clustering``      :func:`cluster_subcomponents`: MDL clustering of coactive subcomponents
                    into components
``_tokens``         one ordered pass over token data; token ids as text
``_site_stats``     the streaming per-site statistics behind :func:`harvest`
=================== ==========================================================================

Views (circuitsvis, offline) are in :mod:`tl_vpd.vis`.
"""

from tl_vpd.analysis.attention import (
    AblationEffect,
    ablation_effect,
    ablation_masks,
    attention_patterns,
    offset_profile,
    prev_token_scores,
)
from tl_vpd.analysis.attribution import AttributionGraph, Node, attribution_graph
from tl_vpd.analysis.clustering import (
    Clustering,
    alpha_for_coactivation,
    cluster_activations,
    cluster_subcomponents,
)
from tl_vpd.analysis.dataset_attribution import DatasetAttributions, dataset_attributions
from tl_vpd.analysis.edit import edit, edit_delta
from tl_vpd.analysis.edit_eval import EditEvaluation, EditStats, evaluate_edit
from tl_vpd.analysis.finders import (
    BoundaryHit,
    PrevTokenHit,
    classify_token,
    find_prev_token_subcomponents,
    find_syntax_boundary,
)
from tl_vpd.analysis.hooked import VPDHookedModel, hooked, mask_hook
from tl_vpd.analysis.ov import OVCircuits, ov_circuits
from tl_vpd.analysis.pruning import PrunedCI, optimize_ci, pruned_attribution_graph
from tl_vpd.analysis.qk import QKInteractions, qk_interaction, qk_interactions
from tl_vpd.analysis.qk_data import QKDataInteractions, qk_data_interactions
from tl_vpd.analysis.routing import BoundaryRouting, boundary_mask, boundary_routing
from tl_vpd.analysis.selection import parse_selection
from tl_vpd.analysis.subcomponents import (
    Context,
    Harvest,
    SubcomponentInfo,
    harvest,
    head_fractions,
    subcomponent,
)

__all__ = [
    "AblationEffect",
    "AttributionGraph",
    "BoundaryHit",
    "BoundaryRouting",
    "Clustering",
    "Context",
    "DatasetAttributions",
    "EditEvaluation",
    "EditStats",
    "Harvest",
    "Node",
    "OVCircuits",
    "PrevTokenHit",
    "PrunedCI",
    "QKDataInteractions",
    "QKInteractions",
    "SubcomponentInfo",
    "VPDHookedModel",
    "ablation_effect",
    "ablation_masks",
    "alpha_for_coactivation",
    "attention_patterns",
    "attribution_graph",
    "boundary_mask",
    "boundary_routing",
    "classify_token",
    "cluster_activations",
    "cluster_subcomponents",
    "dataset_attributions",
    "edit",
    "edit_delta",
    "evaluate_edit",
    "find_prev_token_subcomponents",
    "find_syntax_boundary",
    "harvest",
    "head_fractions",
    "hooked",
    "mask_hook",
    "offset_profile",
    "optimize_ci",
    "ov_circuits",
    "parse_selection",
    "prev_token_scores",
    "pruned_attribution_graph",
    "qk_data_interactions",
    "qk_interaction",
    "qk_interactions",
    "subcomponent",
]
