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
``finders``         the previous-token and syntax-boundary finders
``edit``            :func:`edit` (``dec.edit``): a copy of the target without chosen
                    subcomponents
``hooked``          :func:`hooked` (``dec.hooked``): ``{site}.hook_ci`` / ``hook_mask`` hook
                    points for ``run_with_hooks`` / ``run_with_cache``
``attribution``     :func:`attribution_graph` between subcomponents for one prompt
``pruning``         :func:`optimize_ci` (post-hoc CI for one prediction, adversarially
                    faithful), :func:`pruned_attribution_graph`
``dataset_attribution`` :func:`dataset_attributions`: normalised attributions over a dataset
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
from tl_vpd.analysis.finders import (
    BoundaryHit,
    PrevTokenHit,
    classify_token,
    find_prev_token_subcomponents,
    find_syntax_boundary,
)
from tl_vpd.analysis.hooked import VPDHookedModel, hooked, mask_hook
from tl_vpd.analysis.pruning import PrunedCI, optimize_ci, pruned_attribution_graph
from tl_vpd.analysis.qk import QKInteractions, qk_interaction, qk_interactions
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
    "Clustering",
    "Context",
    "DatasetAttributions",
    "Harvest",
    "Node",
    "PrevTokenHit",
    "PrunedCI",
    "QKInteractions",
    "SubcomponentInfo",
    "VPDHookedModel",
    "ablation_effect",
    "ablation_masks",
    "alpha_for_coactivation",
    "attention_patterns",
    "attribution_graph",
    "classify_token",
    "cluster_activations",
    "cluster_subcomponents",
    "dataset_attributions",
    "edit",
    "edit_delta",
    "find_prev_token_subcomponents",
    "find_syntax_boundary",
    "harvest",
    "head_fractions",
    "hooked",
    "mask_hook",
    "offset_profile",
    "optimize_ci",
    "parse_selection",
    "prev_token_scores",
    "pruned_attribution_graph",
    "qk_interaction",
    "qk_interactions",
    "subcomponent",
]
