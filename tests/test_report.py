"""tl_vpd.report: the EvalReport's JSON round trip and its text/HTML tables (on the report of
test_evaluate's decomposition)."""

import json

import pytest

from test_evaluate import MODES, eval_tokens, one_thread, random_dec, report  # noqa: F401 (fixtures)
from tl_vpd.report import EvalReport


def test_json_round_trip(report, tmp_path):
    json.dumps(report.to_dict())  # plain JSON types only
    path = report.save_json(tmp_path / "eval.json")
    again = EvalReport.from_json(path)
    assert again == report
    assert EvalReport.from_dict(report.to_dict()) == report


def test_repr_and_html_show_every_table(report):
    text, html = repr(report), report._repr_html_()
    for name in MODES + ["blocks.1.mlp.W_gate", "PGD 4 steps", "zero-ablated", "L0/alive",
                         "÷ stochastic", "max ÷ zero-abl.", "stochastic (same tokens)",
                         "3 random restart(s)"]:
        assert name in text
    for name in [m.replace(">", "&gt;") for m in MODES] + ["blocks.1.mlp.W_gate", "PGD 4 steps"]:
        assert name in html
    assert html.count("<table>") == 4


def test_reports_written_before_the_shared_attack_still_load(report, tmp_path):
    """An old eval.json: no CI spectrum or histograms, no reference, adversarial rows with the
    mean alone."""
    old = report.to_dict()
    for key in ("adversarial_reference", "ci_spectrum", "ci_histograms"):
        del old[key]
    old["adversarial"] = [{"pgd_steps": r["pgd_steps"], "kl": r["kl"]} for r in report.adversarial]
    old["settings"] = {k: v for k, v in old["settings"].items()
                       if k not in ("pgd_tokens", "pgd_restarts", "pgd_scope")}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    again = EvalReport.from_json(path)
    assert again.ci_spectrum == [] and again.adversarial_reference == {}
    text = repr(again)
    assert "PGD 4 steps" in text and "sources shared across the batch" in text
    assert again._repr_html_().count("<table>") == 4


def test_plot_ci_spectrum(report):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    ax = report.plot_ci_spectrum()
    assert len(ax.lines) == len(report.sites) + 1  # one per site and the alive threshold
    with pytest.raises(ValueError, match="no CI spectrum"):
        EvalReport.from_dict({**report.to_dict(), "ci_spectrum": []}).plot_ci_spectrum()
