"""tl_vpd.report: the EvalReport's JSON round trip and its text/HTML tables (on the report of
test_evaluate's decomposition)."""

import json

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
    for name in MODES + ["blocks.1.mlp.W_gate", "PGD 4 steps", "zero-ablated", "L0/alive"]:
        assert name in text
    for name in [m.replace(">", "&gt;") for m in MODES] + ["blocks.1.mlp.W_gate", "PGD 4 steps"]:
        assert name in html
    assert html.count("<table>") == 4
