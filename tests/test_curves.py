"""Training curves: quick_eval's rows in ``dec.history`` (L0, alive, stochastic and PGD KL),
their plot (tl_vpd.curves), the report's embedded figure and the history's persistence."""

import base64
import json
import math

import pytest
import torch

import tl_vpd
from tl_vpd import ci_stats, io
from tl_vpd.curves import PANEL_TITLES, plot_training_curves
from tl_vpd.evaluate import evaluate, quick_eval
from tl_vpd.pipeline import packaged_config
from tl_vpd.report import EvalReport
from model_zoo import corpus, make_model, small_cfg

EVAL_KEYS = {"eval/l0", "eval/alive", "eval/stochastic_kl", "eval/pgd_kl"}


@pytest.fixture(scope="module")
def eval_data():
    return corpus(8, seed=3)  # = eval_batches × batch_size rows: every eval sees all of them


@pytest.fixture(scope="module")
def dec(eval_data):
    # log_every=4 does not divide eval_every=3: the step-3 eval row must be recorded anyway.
    cfg = small_cfg(steps=6, batch_size=4, eval_every=3, log_every=4, eval_batches=2,
                    eval_pgd_steps=2, faithfulness_warmup_steps=5)
    return tl_vpd.decompose(make_model("gpt2"), cfg, corpus(), eval_data=eval_data)


def _figure():
    return pytest.importorskip("matplotlib.figure").Figure()


def _panel(fig, title):
    return next(ax for ax in fig.axes if ax.get_title() == title)


def _texts(ax):
    return " ".join(t.get_text() for t in ax.texts)


# ------------------------------------------------------------------ the history
def test_eval_rows_at_the_eval_steps(dec):
    evaluated = [r for r in dec.history if any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in evaluated] == [3, 6]
    assert [r["step"] for r in dec.history] == [0, 3, 4, 6]  # warmup, eval, log, eval + last
    total_C = sum(c.C for c in dec.components.values())
    for r in evaluated:
        assert {k for k in r if k.startswith("eval/")} == EVAL_KEYS
        assert all(math.isfinite(r[k]) and r[k] >= 0 for k in EVAL_KEYS)
        assert isinstance(r["eval/alive"], int) and 0 < r["eval/alive"] <= total_C
        assert r["eval/pgd_kl"] >= r["eval/stochastic_kl"]  # the attack starts from random masks
        assert "stochastic" in r and "adversarial" in r  # the step's training losses beside them


def _hand_alive(dec, data, threshold):
    """Alive as the paper's table counts it: mean CI over the tokens above the threshold."""
    ci = dec.causal_importance(data)
    return sum(int((g.flatten(0, -2).double().mean(0) > threshold).sum()) for g in ci.values())


@pytest.mark.parametrize("median", [False, True], ids=["paper-threshold", "median-threshold"])
def test_alive_is_the_evaluation_reports(dec, eval_data, monkeypatch, median):
    """quick_eval's alive, evaluate's total alive and a count by hand agree on the same tokens;
    at a threshold halfway up the spectrum they must also tell alive from dead."""
    threshold = ci_stats.ALIVE_THRESHOLD
    if median:
        ci = dec.causal_importance(eval_data)
        means = torch.cat([g.flatten(0, -2).double().mean(0) for g in ci.values()])
        threshold = means.median().item()
        monkeypatch.setattr(ci_stats, "ALIVE_THRESHOLD", threshold)
    expected = _hand_alive(dec, eval_data, threshold)
    total_C = sum(c.C for c in dec.components.values())
    if median:
        assert 0 < expected < total_C
    quick = quick_eval(dec, eval_data, dec.config, "kl")
    report = evaluate(dec, eval_data, n_batches=2, batch_size=4, pgd_steps=(), progress=False)
    assert quick["alive"] == report.total["alive"] == expected
    assert quick["l0"] == pytest.approx(report.total["l0"], rel=1e-6)  # fp32 sums of counts


# ------------------------------------------------------------------ the plot
def test_plot_with_eval_rows(dec):
    fig = plot_training_curves(dec, fig=_figure())
    assert [ax.get_title() for ax in fig.axes] == list(PANEL_TITLES)
    losses, recon, l0, alive = fig.axes
    assert {ln.get_label() for ln in losses.get_lines()} == {
        "stochastic", "adversarial", "faithfulness", "minimality"}
    assert [ln.get_label() for ln in recon.get_lines()] == ["stochastic", "PGD"]
    assert recon.get_yscale() == "log" and losses.get_yscale() == "log"
    pgd = recon.get_lines()[1]
    assert list(pgd.get_xdata()) == [3, 6]
    assert list(pgd.get_ydata()) == [r["eval/pgd_kl"] for r in dec.history if "eval/pgd_kl" in r]
    assert {ln.get_label() for ln in l0.get_lines()} == {"training batch", "eval batches"}
    assert list(alive.get_lines()[0].get_ydata()) == [
        r["eval/alive"] for r in dec.history if "eval/alive" in r]
    assert not recon.texts and not alive.texts


def test_plot_without_eval_rows_says_so(dec):
    rows = [{k: v for k, v in r.items() if not k.startswith("eval/")} for r in dec.history]
    fig = plot_training_curves(rows, fig=_figure())
    recon, alive = _panel(fig, PANEL_TITLES[1]), _panel(fig, PANEL_TITLES[3])
    assert not recon.get_lines() and not alive.get_lines()
    assert "no eval rows" in _texts(recon) and "no eval rows" in _texts(alive)
    assert len(_panel(fig, PANEL_TITLES[0]).get_lines()) == 4
    assert [ln.get_label() for ln in _panel(fig, PANEL_TITLES[2]).get_lines()] == ["training batch"]


def test_plot_reads_histories_with_the_old_eval_keys():
    old = [{"step": 5, "stochastic": 0.5, "eval/l0": 9.0, "eval/stochastic": 0.4,
            "eval/adversarial": 0.9}, {"step": 10, "stochastic": 0.3, "eval/l0": 7.0,
                                       "eval/stochastic": 0.2, "eval/adversarial": 0.6}]
    recon = _panel(plot_training_curves(old, fig=_figure()), PANEL_TITLES[1])
    assert [ln.get_label() for ln in recon.get_lines()] == ["stochastic", "PGD"]
    assert list(recon.get_lines()[1].get_ydata()) == [0.9, 0.6]
    # A run resumed from an old checkpoint: the old rows join the new rows' series.
    new = [{"step": 15, "eval/stochastic_kl": 0.1, "eval/pgd_kl": 0.5}]
    recon = _panel(plot_training_curves(old + new, fig=_figure()), PANEL_TITLES[1])
    assert [list(ln.get_ydata()) for ln in recon.get_lines()] == [[0.4, 0.2, 0.1], [0.9, 0.6, 0.5]]
    assert recon.get_ylabel() == "KL"


def test_plot_refuses_an_empty_history():
    with pytest.raises(ValueError, match="history is empty"):
        plot_training_curves([])
    untrained = tl_vpd.Decomposition.from_model(make_model("gpt2"), C=4)
    with pytest.raises(ValueError, match="history is empty"):
        plot_training_curves(untrained)
    with pytest.raises(TypeError, match="history rows"):
        plot_training_curves([1, 2])


def test_plot_on_a_new_pyplot_figure(dec):
    plt = pytest.importorskip("matplotlib.pyplot")
    fig = tl_vpd.plot_training_curves(dec)
    try:
        assert isinstance(fig, plt.Figure) and len(fig.axes) == 4
    finally:
        plt.close(fig)


# ------------------------------------------------------------------ the report and persistence
def test_report_embeds_the_curves(dec, eval_data, tmp_path):
    pytest.importorskip("matplotlib")
    report = evaluate(dec, eval_data, n_batches=1, batch_size=4, pgd_steps=(), progress=False)
    assert report.history == dec.history
    html = report._repr_html_()
    assert html.count("<img ") == 1 and "Training curves (4 logged rows)" in html
    uri = html.split('<img src="', 1)[1].split('"', 1)[0]
    head, data = uri.split(",", 1)
    assert head == "data:image/png;base64"
    assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
    assert "Training history: 4 logged rows" in repr(report)
    assert EvalReport.from_json(report.save_json(tmp_path / "eval.json")) == report
    bare = EvalReport(**{**report.to_dict(), "history": []})
    assert "<img" not in bare._repr_html_() and "Training history" not in repr(bare)


def test_history_is_saved_with_the_decomposition(dec, tmp_path):
    model = dec.model
    dec.save(tmp_path / "d")
    assert tl_vpd.load(tmp_path / "d", model).history == dec.history
    file = tmp_path / "d" / io.SPEC_FILE
    meta = json.loads(file.read_text())
    del meta["history"]  # saved before histories were: loads with none
    file.write_text(json.dumps(meta))
    assert tl_vpd.load(tmp_path / "d", model).history == []
    file.write_text(json.dumps({**meta, "history": [{"step": "three"}]}))
    with pytest.raises(ValueError, match="'history' must be a list"):
        tl_vpd.load(tmp_path / "d", model)


@pytest.mark.parametrize("name", ["vpd.yaml", "quick_vpd.yaml"])
def test_the_main_job_configs_draw_about_ten_eval_points(name):
    cfg = tl_vpd.VPDConfig.from_file(packaged_config(name))
    # the default job (1700 steps) evaluates 17 times, ~3% of its decomposition time
    assert cfg.eval_every > 0 and 8 <= cfg.steps // cfg.eval_every <= 18
    assert cfg.eval_batches == 1  # the cost budget: see the configs' comments
