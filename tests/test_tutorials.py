"""Every tutorial notebook executes top to bottom in its quick setting (TL_VPD_QUICK=1); with
``TL_VPD_MAIN_RUN`` set to a finished ``tl-vpd main`` run directory, tutorial 03 also runs its
analysis on that run's target and decomposition (``.ci/tl4.sh`` does this on TransformerLens 4)."""

import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "tutorials").glob("*.ipynb"))
ATTENTION_CIRCUITS = Path(__file__).parent.parent / "tutorials" / "03_attention_circuits.ipynb"


def _execute(path: Path) -> list[str]:
    """Run the notebook at ``path``; return the text of its stream outputs, after asserting that
    no cell raised."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [f"{o.get('ename')}: {o.get('evalue')}" for o in outputs
              if o.get("output_type") == "error"]
    assert not errors, errors
    return [o.get("text", "") for o in outputs if o.get("output_type") == "stream"]


def test_there_are_tutorials():
    assert NOTEBOOKS, "tutorials/ has no notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("TL_VPD_QUICK", "1")
    monkeypatch.setenv("TL_VPD_RUNS", str(tmp_path))
    _execute(path)


@pytest.mark.skipif(not os.environ.get("TL_VPD_MAIN_RUN"),
                    reason="set TL_VPD_MAIN_RUN to a finished `tl-vpd main` run directory")
def test_attention_circuits_on_a_main_run(tmp_path, monkeypatch):
    """Tutorial 03 in its full setting loads the run (target and decomposition) and runs every
    analysis entry point on it: finders, ablation, Q·K interactions, views, subcomponent cards,
    editing, the hooked view and the attribution graph."""
    run = Path(os.environ["TL_VPD_MAIN_RUN"]).resolve()
    assert (run / "decomp" / "decomposition").is_dir(), f"{run} holds no finished decomposition"
    (tmp_path / "main").symlink_to(run, target_is_directory=True)  # the notebook reads RUNS/main
    monkeypatch.delenv("TL_VPD_QUICK", raising=False)
    monkeypatch.setenv("TL_VPD_RUNS", str(tmp_path))
    monkeypatch.setenv("TL_VPD_THREADS", "1")
    text = "".join(_execute(ATTENTION_CIRCUITS))
    assert "no finished `tl-vpd main` run" not in text, "the notebook did not load the run"
    assert "notebook ran in" in text
