"""Steps per second of a decomposition with 1 vs 2 data-parallel processes (torchrun, gloo).

    python benchmarks/distributed.py [--quick]

Same global batch in both runs; each process uses one thread, so 2 processes use both cores of a
2-core machine while the single process uses one (a second row gives the single process both).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from _common import bench_model, machine


def worker(steps: int, B: int, T: int, out: str) -> None:
    import tl_vpd

    model = bench_model(d_model=64, d_mlp=256, n_ctx=T, d_vocab=1024)
    toks = torch.randint(0, 1024, (256, T), generator=torch.Generator().manual_seed(0))
    cfg = tl_vpd.VPDConfig(C=128, steps=steps + 2, batch_size=B, seq_len=T, progress=False,
                           faithfulness_warmup_steps=0, log_every=1)
    times = []
    tl_vpd.decompose(model, cfg, toks, callbacks=[lambda s, m, d: times.append(time.perf_counter())])
    if int(os.environ.get("RANK", "0")) == 0:
        with open(out, "w") as f:
            json.dump({"s_per_step": (times[-1] - times[1]) / (len(times) - 2)}, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        torch.set_num_threads(int(args.worker[3]))
        worker(int(args.worker[0]), int(args.worker[1]), 64, args.worker[2])
        return
    steps, B = (3, 8) if args.quick else (10, 16)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    rows = {}
    for name, nproc, threads in [("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2),
                                 ("2 processes (torchrun), 1 thread each", 2, 1)]:
        out = f"/tmp/tl_vpd_dist_{nproc}_{threads}.json"
        launcher = [sys.executable] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        subprocess.run([*launcher, __file__, "--worker", str(steps), str(B), out, str(threads)],
                       check=True, env=env)
        with open(out) as f:
            rows[name] = json.load(f)["s_per_step"]
    print(f"machine: {machine()}; model 4 layers d_model 64, C=128, global batch {B}×64, persistent PGD")
    base = rows["1 process, 1 thread"]
    print(f"{'setting':<42}{'s/step':>8}{'steps/s':>9}{'speed-up':>10}")
    for name, t in rows.items():
        print(f"{name:<42}{t:>8.3f}{1 / t:>9.2f}{base / t:>10.2f}")


if __name__ == "__main__":
    main()
