"""Analysis of a trained decomposition: inspection, attention mechanisms, editing, attribution.

=================== ==========================================================================
module              what
=================== ==========================================================================
``inspect``         :func:`subcomponent` (``dec.subcomponent``), dataset-level :func:`harvest`
``attention``       previous-token scores, ablation effects, the previous-token and
                    syntax-boundary finders, static Q·K interactions with rotary
``edit``            :func:`edit` (``dec.edit``): a new HookedTransformer without chosen
                    subcomponents
``hooks``           :func:`hooked` (``dec.hooked``): ``{site}.hook_ci`` / ``hook_mask`` hook
                    points for ``run_with_hooks`` / ``run_with_cache``
``attribution``     :func:`attribution_graph` between subcomponents for one prompt
=================== ==========================================================================

Views (circuitsvis, offline) are in :mod:`tl_vpd.vis`.
"""

from tl_vpd.analysis.attention import (
    AblationEffect,
    BoundaryHit,
    PrevTokenHit,
    QKInteractions,
    ablation_effect,
    ablation_masks,
    attention_patterns,
    classify_token,
    find_prev_token_subcomponents,
    find_syntax_boundary,
    offset_profile,
    prev_token_scores,
    qk_interaction,
    qk_interactions,
)
from tl_vpd.analysis.attribution import AttributionGraph, Node, attribution_graph
from tl_vpd.analysis.edit import edit, edit_delta
from tl_vpd.analysis.hooks import VPDHookedModel, hooked, mask_hook
from tl_vpd.analysis.inspect import (
    Context,
    Harvest,
    SubcomponentInfo,
    harvest,
    head_fractions,
    parse_selection,
    subcomponent,
)

__all__ = [
    "AblationEffect",
    "AttributionGraph",
    "BoundaryHit",
    "Context",
    "Harvest",
    "Node",
    "PrevTokenHit",
    "QKInteractions",
    "SubcomponentInfo",
    "VPDHookedModel",
    "ablation_effect",
    "ablation_masks",
    "attention_patterns",
    "attribution_graph",
    "classify_token",
    "edit",
    "edit_delta",
    "find_prev_token_subcomponents",
    "find_syntax_boundary",
    "harvest",
    "head_fractions",
    "hooked",
    "mask_hook",
    "offset_profile",
    "parse_selection",
    "prev_token_scores",
    "qk_interaction",
    "qk_interactions",
    "subcomponent",
]
