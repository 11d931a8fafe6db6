"""tl_vpd.tables: the one text/HTML table helper behind every report."""

from tl_vpd.tables import format_cell, html_table, text_table

COLS = [("mode", "mode"), ("ce", "CE"), ("ce_recovered", "CE recovered"), ("n", "n")]
ROWS = [{"mode": "target", "ce": 3.25, "ce_recovered": 1.0, "n": 12345},
        {"mode": "zero-ablated", "ce": None, "ce_recovered": 0.5}]


def test_format_cell_rules():
    assert format_cell("x", None) == "—"
    assert format_cell("x", 1234567) == "1,234,567"
    assert format_cell("ce_recovered", 0.9567) == "95.7%"
    assert format_cell("l0_per_alive", 0.12345) == "0.123"
    assert format_cell("kl", 0.5) == "0.5000"
    assert format_cell("kl", 123456.0) == "1.235e+05"
    assert format_cell("flag", True) == "True"


def test_text_table_aligns_columns():
    lines = text_table(COLS, ROWS).splitlines()
    assert lines[0].split() == ["mode", "CE", "CE", "recovered", "n"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].startswith("target ") and lines[2].endswith("12,345")
    assert lines[3].startswith("zero-ablated") and "—" in lines[3] and "50.0%" in lines[3]
    assert len({len(line) for line in lines[:3]}) == 1  # right-aligned to one width


def test_html_table_escapes_and_aligns():
    html = html_table([("k", "<k>")], [{"k": "a&b"}])
    assert "<th>&lt;k&gt;</th>" in html and "a&amp;b" in html and "text-align:left" in html
    assert html.startswith("<table>") and html.endswith("</table>")
