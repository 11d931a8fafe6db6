"""benchmarks/capacity.py: the capacity sweep's runs, reuse and table, on a tiny target."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from model_zoo import make_model, tokens
from tl_vpd.config import VPDConfig
from tl_vpd.data.corpus import LMCorpus
from tl_vpd.data.tokenizer import train_tokenizer
from tl_vpd.pipeline import RunDirError, packaged_config

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "capacity.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_capacity", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _base():
    return VPDConfig.from_file(packaged_config("quick_vpd.yaml")).replace(
        C=3, steps=3, batch_size=4, seq_len=16, checkpoint_every=0, log_every=0, eval_every=0,
        progress=False)


def test_capacity_sweep_runs_reuses_and_tabulates(bench, tmp_path):
    model = make_model("gpt2")
    corpus = LMCorpus(tokens(64, 16, seed=1), tokens(32, 16, seed=2),
                      train_tokenizer(["def f(x): return x"] * 4, vocab_size=300))
    base = _base()
    assert bench.run_config(base, 0.5).C == 2 and bench.run_config(base, 2).C == 6
    assert bench.run_config(base, 0.1).C == 1
    rows = bench.sweep(model, corpus, [], tmp_path, base, (1, 2), {}, pgd_steps=2,
                       log=lambda s: None)
    assert [r["C"] for r in rows] == [3, 6]
    n_sites = len(json.loads((tmp_path / "x1" / "eval.json").read_text())["sites"])
    for r in rows:
        assert r["capacity"] == r["C"] * n_sites and 0 <= r["alive"] <= r["capacity"]
        assert 0 <= r["regular"] <= r["alive"]
        assert r["decompose_s"] > 0 and 0 <= r["split"] <= 1 and r["pgd_per_zero_max"] >= 0
    # The splitting column uses the report's alive set: the same count per site.
    from tl_vpd.decomposition import Decomposition
    dec = Decomposition.load(tmp_path / "x2" / "decomp" / "decomposition", model)
    dirs = bench.alive_directions(dec, corpus.val, 8, 16)
    report = json.loads((tmp_path / "x2" / "eval.json").read_text())
    assert {s["site"]: s["alive"] for s in report["sites"]} == {
        s: d.shape[0] for s, d in dirs.items()}
    # Finished runs are read, not re-run: the same rows, no training time.
    again = bench.sweep(model, corpus, [], tmp_path, base, (1, 2), {}, pgd_steps=2,
                        log=lambda s: None)
    assert all(r["decompose_s"] is None for r in again)
    assert [r["alive"] for r in again] == [r["alive"] for r in rows]
    assert [r["split"] for r in again] == pytest.approx([r["split"] for r in rows])
    # Another attack on finished runs: their eval.json is kept, the sweep evaluates beside it.
    kept = (tmp_path / "x1" / "eval.json").read_bytes()
    other = bench.sweep(model, corpus, [], tmp_path, base, (1,), {}, pgd_steps=3,
                        log=lambda s: None)
    assert (tmp_path / "x1" / "eval.json").read_bytes() == kept
    own = json.loads((tmp_path / "x1.eval.json").read_text())
    assert [a["pgd_steps"] for a in own["adversarial"]] == [3]
    assert other[0]["pgd_per_zero_max"] == own["adversarial"][0]["per_zero_max"]
    # A run directory of another config is refused, not overwritten.
    with pytest.raises(RunDirError, match="another config"):
        bench.sweep(model, corpus, [], tmp_path / "other", base, (1,),
                    {1: tmp_path / "x2"}, pgd_steps=2, log=lambda s: None)
    text = bench.tables(rows)
    assert "×2" in text and "6,500" in text
    bench.plot(rows, tmp_path / "cap.png")
    assert (tmp_path / "cap.png").stat().st_size > 0


def test_splitting_is_against_the_x1_run(bench):
    e1, e2 = torch.eye(2)
    dirs = {1: {"a": torch.stack([e1])}, 2: {"a": torch.stack([e1, (e1 + 0.1 * e2), -e2])}}
    rows = [{"mult": 1}, {"mult": 2}]
    bench.add_splitting(rows, dirs)
    assert rows[0]["split"] == 0.0 and rows[1]["split"] == 1.0  # e1 matched twice at ×2
    rows = [{"mult": 2}]
    bench.add_splitting(rows, {2: dirs[2]})  # no ×1 run: nothing to compare against
    assert "split" not in rows[0]
