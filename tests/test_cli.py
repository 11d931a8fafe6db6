"""The ``tl-vpd`` command line end to end on a tiny target; the real ``--quick`` run is slow.
(The stages and their configs without training: test_pipeline.py.)"""

import contextlib
import importlib.util
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tl_vpd.cli import _eval_kw, _parser, main
from tl_vpd.pipeline import DEFAULT_EVAL, QUICK_EVAL
from tl_vpd.report import EvalReport

TINY_TARGET = {
    "corpus": {"seq_len": 32, "vocab_size": 320, "max_bytes": 300_000},
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "seed": 0},
    "train": {"steps": 30, "batch_size": 16, "lr": 1e-2, "warmup_steps": 5, "eval_every": 10,
              "eval_batches": 2},
}
TINY_VPD = {"C": 32, "steps": 20, "batch_size": 4, "seq_len": 32, "faithfulness_warmup_steps": 50,
            "checkpoint_every": 10}
TINY_EVAL = ["--n-batches", "2", "--pgd-steps", "2,3", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (see test_evaluate.py)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_configs(tmp_path_factory):
    d = tmp_path_factory.mktemp("configs")
    (d / "target.yaml").write_text(yaml.safe_dump(TINY_TARGET))
    (d / "vpd.yaml").write_text(yaml.safe_dump(TINY_VPD))
    return d / "target.yaml", d / "vpd.yaml"


@pytest.fixture(scope="module")
def pipeline(tiny_configs, tmp_path_factory):
    """``tl-vpd main`` on the tiny configs: (run dir, printed output); capsys is per test."""
    out = tmp_path_factory.mktemp("run")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["main", "--out", str(out), "--target-config", str(tiny_configs[0]),
                   "--vpd-config", str(tiny_configs[1]), *TINY_EVAL])
    assert rc == 0
    return out, buf.getvalue()


def test_main_runs_every_stage_and_saves_the_report(pipeline):
    out, text = pipeline
    for stage in ("[target]", "[decompose]", "[evaluate]", "timings:"):
        assert stage in text
    assert "unmasked, Δ on" in text and "PGD 3 steps" in text
    report = EvalReport.from_json(out / "eval.json")
    assert [r["pgd_steps"] for r in report.adversarial] == [2, 3]
    assert abs(report.row("unmasked, Δ on")["ce"] - report.row("target")["ce"]) <= 1e-5
    assert report.row("target")["compute_recovered"] is not None  # the target's curve was used
    assert (out / "target" / "model.safetensors").is_file()
    assert (out / "decomp" / "decomposition" / "decomposition.json").is_file()


def test_main_again_reuses_finished_stages(pipeline, tiny_configs, capsys):
    out, _ = pipeline
    rc = main(["main", "--out", str(out), "--target-config", str(tiny_configs[0]),
               "--vpd-config", str(tiny_configs[1]), *TINY_EVAL])
    text = capsys.readouterr().out
    assert rc == 0 and "target found" in text and "decomposition found" in text


def test_evaluate_command(pipeline, capsys):
    out, _ = pipeline
    (out / "eval.json").unlink()
    assert main(["evaluate", "--run", str(out), "--n-batches", "1", "--pgd-steps", "2",
                 "--no-progress"]) == 0
    assert "rounded CI > 0.5" in capsys.readouterr().out
    assert EvalReport.from_json(out / "eval.json").settings["n_batches"] == 1


def test_decompose_command_and_resume(pipeline, tiny_configs, tmp_path, capsys):
    out, _ = pipeline
    args = ["decompose", "--target", str(out / "target"), "--out", str(tmp_path),
            "--config", str(tiny_configs[1]), "--no-progress"]
    assert main(args) == 0
    assert (tmp_path / "decomp" / "decomposition").is_dir()
    ckpts = sorted((tmp_path / "decomp" / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step_0000010", "step_0000020"]
    # An unfinished run (its final decomposition missing) continues when the same command is
    # re-run (it used to need --resume, which the interrupt hint did not say); --resume is kept.
    shutil.rmtree(tmp_path / "decomp" / "decomposition")
    shutil.rmtree(ckpts[-1])
    assert main(args) == 0
    assert (tmp_path / "decomp" / "decomposition").is_dir()
    assert main(args + ["--resume"]) == 0


def test_a_changed_config_is_refused(pipeline, tiny_configs, tmp_path, capsys):
    out, _ = pipeline
    other = tmp_path / "vpd.yaml"
    other.write_text(yaml.safe_dump({**TINY_VPD, "C": 16}))
    assert main(["decompose", "--target", str(out / "target"), "--out", str(out),
                 "--config", str(other), "--no-progress"]) == 2
    assert "another config" in capsys.readouterr().err
    assert main(["train-target", "--out", str(out), "--config", str(tiny_configs[0]),
                 "--steps", "5", "--no-progress"]) == 2
    assert "another config" in capsys.readouterr().err


def test_the_sweep_tabulates_finished_runs(pipeline, tmp_path):
    """``benchmarks/sweep.py --from-runs`` reads each run's eval.json and config: the point is
    what differs from the packaged vpd.yaml, the numbers are the report's."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sweep.py"
    spec = importlib.util.spec_from_file_location("bench_sweep", path)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    out, _ = pipeline
    run = tmp_path / "run"
    for stage in ("target", "decomp"):
        shutil.copytree(out / stage, run / stage)
    assert main(["evaluate", "--run", str(run), "--n-batches", "1", "--pgd-steps", "20",
                 "--pgd-tokens", "128", "--pgd-restarts", "2", "--no-progress"]) == 0
    with pytest.raises(FileNotFoundError, match="eval.json"):
        sweep.rows_from_runs([str(tmp_path / "missing")])
    sweep.main(["--from-runs", str(run), "--out", str(tmp_path / "table.md")])
    [row] = json.loads((tmp_path / "table.json").read_text())["rows"]
    report = EvalReport.from_json(run / "eval.json")
    assert row["point"]["C"] == TINY_VPD["C"] and row["point"]["steps"] == TINY_VPD["steps"]
    assert row["pgd20_max_per_stochastic"] == report.pgd(20)["per_stochastic_max"]
    assert row["alive_per_C"] == report.total["alive"] / report.total["C"]
    table = (tmp_path / "table.md").read_text()
    assert "C=32" in table
    # The unmasked row (Δ excluded) is shown: a point that drops the faithfulness loss can look
    # better on every other column while U V drifts from W.
    unmasked = f"{100 * report.row('unmasked')['ce_recovered']:.1f}%"
    assert "CE rec. (unmasked)" in table and unmasked in table.splitlines()[-1]


@pytest.mark.slow
def test_main_quick_end_to_end(tmp_path, capsys):
    """The real ``tl-vpd main --quick`` (a few minutes on 2 CPU cores)."""
    assert main(["main", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    report = EvalReport.from_json(tmp_path / "eval.json")
    ce = {r["mode"]: r["ce"] for r in report.recon}
    assert ce["target"] <= ce["unmasked"] + 1e-3 < ce["zero-ablated"]
    assert "timings:" in capsys.readouterr().out


def test_eval_options_override_the_quick_defaults():
    args = _parser().parse_args(["evaluate", "--run", "R", "--quick", "--pgd-steps", "2,3",
                                 "--seed", "4"])
    assert _eval_kw(args) == {**QUICK_EVAL, "pgd_steps": (2, 3), "seed": 4}
    assert _eval_kw(_parser().parse_args(["main"])) == DEFAULT_EVAL


def test_user_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    bad = tmp_path / "t.yaml"
    bad.write_text(yaml.safe_dump({**TINY_TARGET, "train": {"stpes": 3}}))
    argv = ["train-target", "--out", str(tmp_path / "run"), "--config", str(bad), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tl-vpd: error: ") and "stpes" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="stpes"):
        main(["--debug", *argv])
