"""The model card (``README.md``) of a shared decomposition (:mod:`tl_vpd.sharing`).

YAML front matter the Hugging Face Hub reads (``library_name: tl_vpd``, tags, the target's name
as ``base_model`` when it is a pretrained model), then markdown: what was decomposed (sites,
``C`` per site, the causal-importance function), the training settings that matter most, the
evaluation tables of an :class:`~tl_vpd.report.EvalReport` when one is given, and how to load it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import yaml

from tl_vpd.report import EvalReport
from tl_vpd.tables import format_cell

if TYPE_CHECKING:
    from tl_vpd.decomposition import Decomposition

__all__ = ["TAGS", "front_matter", "markdown_table", "render"]

TAGS = ("tl_vpd", "vpd", "parameter-decomposition", "mechanistic-interpretability",
        "transformer-lens")

# The VPDConfig fields shown in the card (the whole config is in decomposition.json).
_HIGHLIGHTS = ("steps", "batch_size", "seq_len", "lr", "coeff_faithfulness", "coeff_stochastic",
               "coeff_adversarial", "coeff_minimality", "freq_beta", "p_start", "p_end",
               "use_delta_component", "routing", "adversary", "pgd_steps", "ppgd_inner_steps",
               "seed")
_CI_FIELDS = {"mlp": ("ci_hidden",), "vector_mlp": ("ci_hidden",), "shared_mlp": ("ci_hidden",),
              "global_mlp": ("ci_hidden", "ci_d_model"),
              "global_transformer": ("ci_d_model", "ci_n_layers", "ci_n_heads")}


def target_label(record: Mapping) -> str:
    """The target's name for people: its pretrained name, else its type and where it is."""
    if record.get("name"):
        return str(record["name"])
    if record.get("path"):
        return f"{record['target_type']} at {record['path']}"
    return f"a custom {record['target_type']}"


def front_matter(record: Mapping) -> dict:
    """The card's YAML metadata."""
    meta: dict = {"library_name": "tl_vpd", "tags": list(TAGS)}
    if record.get("name") and record.get("backend") in ("hooked_transformer", "transformer_bridge"):
        meta["base_model"] = record["name"]
    meta["tl_vpd_target"] = target_label(record)
    return meta


def markdown_table(cols: Sequence[tuple[str, str]], rows: Sequence[Mapping]) -> str:
    """A markdown (GitHub) table; cells as :func:`tl_vpd.tables.format_cell` writes them."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for _, h in cols) + " |",
             "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(cols))) + "|"]
    lines += ["| " + " | ".join(cell(format_cell(k, r.get(k))) for k, _ in cols) + " |"
              for r in rows]
    return "\n".join(lines)


def _decomposition_section(dec: Decomposition) -> list[str]:
    spec, comps = dec.spec, dec.components
    ci = ", ".join(f"{f}={getattr(spec, f)}" for f in _CI_FIELDS.get(spec.ci_fn, ()))
    total = sum(c.C for c in comps.values())
    rows = [{"site": n, "shape": f"[{c.d_out}, {c.d_in}]", "C": c.C} for n, c in comps.items()]
    return [
        "## Decomposition", "",
        f"{len(comps)} sites, {total:,} rank-one subcomponents in all. Each site's matrix "
        "`W [d_out, d_in]` is approximated by `U diag(m) V` (`U [d_out, C]`, `V [C, d_in]`) plus "
        "the residual `Δ = W − U V`; the causal-importance function gives every subcomponent "
        "its importance per token.", "",
        f"- causal-importance function: `{spec.ci_fn}`" + (f" ({ci})" if ci else ""),
        f"- leaky hard sigmoid slope: {spec.leaky_alpha}; initialisation: `{spec.init}`; "
        f"dtype: `{spec.dtype}`; seed: {spec.seed}", "",
        markdown_table([("site", "site"), ("shape", "W [d_out, d_in]"), ("C", "C")], rows), "",
    ]


def _training_section(dec: Decomposition) -> list[str]:
    cfg = dec.config
    if cfg is None:
        return ["## Training", "", "No training config was saved (built by hand).", ""]
    rows = [{"setting": f"`{k}`", "value": str(getattr(cfg, k))} for k in _HIGHLIGHTS
            if hasattr(cfg, k)]
    return ["## Training", "",
            "The settings that matter most; the full `VPDConfig` is in `decomposition.json`.", "",
            markdown_table([("setting", "setting"), ("value", "value")], rows), ""]


def _evaluation_section(report: EvalReport) -> list[str]:
    lines = ["## Evaluation", "", f"{report._header()} (also in `eval_report.json`).", ""]
    for title, cols, rows in report._tables():
        lines += [f"**{title}**", "", markdown_table(cols, rows), ""]
    return lines


def _loading_section(record: Mapping, where: str) -> list[str]:
    if record.get("path"):
        how = f"from the target run directory `{record['path']}` it was recorded with"
    elif record.get("name"):
        how = f"as the pretrained model `{record['name']}`"
    else:
        how = None
    src = json.dumps(where)
    lines = ["## Loading", "", "```python", "import tl_vpd", "",
             f"dec = tl_vpd.from_pretrained({src}, model=target)  # onto the target"]
    if how:
        lines.append(f"dec = tl_vpd.from_pretrained({src})  # rebuilds the target: dec.model")
    lines += ["ci = dec.causal_importance(tokens)  # {site: [batch, pos, C]}", "```", ""]
    lines.append(f"Without `model=` the target is rebuilt {how} (see `target.json`)." if how else
                 "`target.json` records no way to rebuild the target: pass it as `model=`.")
    lines += ["Loading checks that the target's weights are the ones that were decomposed.", ""]
    return lines


def render(dec: Decomposition, record: Mapping, report: EvalReport | None, where: str) -> str:
    """The whole ``README.md``.

    Arguments:
        dec: the decomposition.
        record: its ``target.json`` record (:func:`tl_vpd.sharing.target_record`).
        report: an evaluation of ``dec``, or ``None``.
        where: the repository id or directory shown in the loading instructions.

    Returns:
        The card's text: YAML front matter between ``---`` lines, then markdown.
    """
    meta = yaml.safe_dump(front_matter(record), sort_keys=False, allow_unicode=True)
    label = target_label(record)
    lines = ["---", meta.rstrip("\n"), "---", "", f"# VPD decomposition of {label}", "",
             f"An adversarial parameter decomposition (VPD) of a `{record['target_type']}` "
             f"(backend `{record['backend']}`, TransformerLens "
             f"{record.get('transformer_lens_version')}), made with tl_vpd "
             f"{record.get('tl_vpd_version')}.", ""]
    lines += _decomposition_section(dec) + _training_section(dec)
    if report is not None:
        lines += _evaluation_section(report)
    lines += _loading_section(record, where)
    return "\n".join(lines)
