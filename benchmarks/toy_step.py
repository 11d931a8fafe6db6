"""CPU time per SPD training step on the toy models, optionally A/B against another checkout.

    python benchmarks/toy_step.py                          # this checkout
    python benchmarks/toy_step.py --compare /path/to/other/checkout --rounds 6

Each model is built untrained (the step's cost does not depend on the weights) with the
settings of ``reproduce_spd_toys.py --scale cpu`` (``CPU_OVERRIDES``; ``--batch`` and ``--C``
override its batch size and subcomponent count, e.g. ``--batch 4096 --C 200`` for the SPD
paper's TMS 40-10 step), including ``compile`` (on for the toys' full runs: the ``mlp`` CI
function's fused kernel); the workers compile during their warm-up steps, before timing. Time is ``time.process_time`` of the worker process, one intra-op
thread, so other load on a shared machine inflates it less than wall time. With ``--compare``
one worker process per checkout runs the same steps, alternating in short rounds, and the
table shows the median ms/step of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

MODELS = ["tms_5-2", "tms_40-10", "tms_40-10-id", "resid_mlp1"]
HERE = Path(__file__).resolve().parent


def _worker(names: list[str], overrides: dict) -> None:
    """Build one trainer per model, then answer ``name steps`` lines with CPU ms/step."""
    import time

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    from reproduce_spd_toys import CPU_OVERRIDES

    from tl_vpd.toy_models import EXPERIMENTS, TMS, ResidualMLP, toy_config
    from tl_vpd.trainer import Trainer

    trainers = {}
    for name in names:
        if name.startswith("tms"):
            nf, nh = (5, 2) if "5-2" in name else (40, 10)
            model = TMS(nf, nh, identity=name.endswith("-id"), seed=0)
        else:
            model = ResidualMLP(100, 1000, 50, 1, seed=0)
        for p in model.parameters():
            p.requires_grad_(False)
        cfg = toy_config(name, "spd", **{**CPU_OVERRIDES[name], **overrides})
        tr = Trainer(model, cfg, EXPERIMENTS[name].data(model))
        for _ in range(3):
            tr.train_step(tr.stream.next())
        trainers[name] = tr
    print("ready", flush=True)
    for line in sys.stdin:
        name, steps = line.split()
        tr = trainers[name]
        t = time.process_time()
        for _ in range(int(steps)):
            tr.train_step(tr.stream.next())
        print(1000 * (time.process_time() - t) / int(steps), flush=True)


def _start(tree: Path, names: list[str], overrides: dict) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1",
               TOY_STEP_OVERRIDES=json.dumps(overrides))
    proc = subprocess.Popen([sys.executable, __file__, "--worker", *names], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the worker for {tree} did not start")
    return proc


def _ask(proc: subprocess.Popen, name: str, steps: int) -> float:
    proc.stdin.write(f"{name} {steps}\n")
    proc.stdin.flush()
    return float(proc.stdout.readline())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", type=Path, help="another checkout (the 'before' column)")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="steps per round and model")
    parser.add_argument("--batch", type=int, help="batch size for every model")
    parser.add_argument("--C", type=int, help="subcomponents per site for every model")
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        _worker(args.worker, json.loads(os.environ.get("TOY_STEP_OVERRIDES", "{}")))
        return 0
    overrides = {k: v for k, v in (("batch_size", args.batch), ("C", args.C)) if v is not None}
    trees = {"this": HERE.parent}
    if args.compare is not None:
        trees = {"before": args.compare.resolve(), "after": HERE.parent}
    procs = {k: _start(t, args.models, overrides) for k, t in trees.items()}
    times = {(k, m): [] for k in procs for m in args.models}
    for _ in range(args.rounds):
        for m in args.models:
            for k, proc in procs.items():
                times[k, m].append(_ask(proc, m, args.steps))
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    med = {key: statistics.median(v) for key, v in times.items()}
    print(f"{'model':<14}" + "".join(f"{k + ' ms/step':>18}" for k in procs)
          + (f"{'speed-up':>10}" if len(procs) == 2 else ""))
    for m in args.models:
        row = f"{m:<14}" + "".join(f"{med[k, m]:>18.2f}" for k in procs)
        if len(procs) == 2:
            row += f"{med['before', m] / med['after', m]:>9.2f}x"
        print(row)
    print(json.dumps({f"{k}/{m}": round(v, 3) for (k, m), v in med.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
