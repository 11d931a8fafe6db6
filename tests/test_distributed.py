"""Data parallelism with torchrun (gloo on CPU) equals a single-process run with the same batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tl_vpd.target_model import HAS_HOOKED_TRANSFORMER

WORKER = Path(__file__).with_name("ddp_worker.py")


def run(out: Path, adversary: str, nproc: int) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), str(out), adversary]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", str(WORKER), str(out), adversary]
    subprocess.run(cmd, check=True, env=env, timeout=600, capture_output=True)


@pytest.mark.skipif(not HAS_HOOKED_TRANSFORMER, reason="the worker decomposes a model_zoo "
                    "HookedTransformer (TransformerLens < 4)")
@pytest.mark.parametrize("adversary", ["persistent", "fresh"])
def test_two_processes_equal_one(tmp_path, adversary):
    run(tmp_path / "single", adversary, 1)
    run(tmp_path / "ddp", adversary, 2)
    single = json.loads((tmp_path / "single" / "rank0.json").read_text())
    r0 = json.loads((tmp_path / "ddp" / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "ddp" / "rank1.json").read_text())
    # really data parallel: two ranks, each forward on half of the global batch of 8
    assert (single["world"], r0["world"], r1["world"]) == (1, 2, 2)
    assert single["batch_rows"] == [8] and r0["batch_rows"] == [4] == r1["batch_rows"]
    # same losses per step
    assert len(single["history"]) == len(r0["history"])
    for a, b in zip(single["history"], r0["history"]):
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(a[k])), (k, a[k], b[k])
    # ranks hold identical parameters after every step
    assert r0["checksums"] == r1["checksums"]
    # same final parameters
    p1 = torch.load(tmp_path / "single" / "params.pt")
    p2 = torch.load(tmp_path / "ddp" / "params.pt")
    for k in p1:
        assert torch.allclose(p1[k], p2[k], atol=1e-5), k
