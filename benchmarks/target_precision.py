"""Does the target train as well in bf16 autocast as in fp32, and how much faster?

    python benchmarks/target_precision.py [--quick] [--steps N]

The main job's target (configs/target.yaml: 4 layers, d_model 128, d_mlp 512, vocab 4096, batch
32 × 128) on the default corpus, trained twice from the same seed and batch order, once with
``autocast="none"`` and once with ``autocast="auto"`` (bf16 where this machine's bf16 matmuls
are native, see tl_vpd.precision). Validation is fp32 in both. Prints the validation-CE curve of
each and the CPU seconds per step (``time.process_time``: less sensitive to a shared machine
than wall time; one thread). ``--quick``: the `tl-vpd main --quick` target, 60 steps.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from tl_vpd.data import default_corpus
from tl_vpd.pipeline import packaged_config, read_target_config
from tl_vpd.precision import use_bf16
from tl_vpd.target import target_config, train_target


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the quick target, 60 steps")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default 300)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = read_target_config(packaged_config("quick_target.yaml" if args.quick else "target.yaml"))
    steps = args.steps or (60 if args.quick else 300)
    train = dict(cfg["train"], steps=steps, warmup_steps=min(cfg["train"]["warmup_steps"], steps // 4),
                 eval_every=max(steps // 4, 1))
    with tempfile.TemporaryDirectory() as tmp:
        corpus = default_corpus(**cfg["corpus"], cache_dir=tmp)
        model_cfg = target_config(corpus.vocab_size, n_ctx=corpus.seq_len, **cfg["model"])
        rows = {}
        for kind in ("none", "auto"):
            t = time.process_time()
            run = train_target(model_cfg, corpus.train, corpus.val, **train, progress=False,
                               autocast=kind)
            rows[kind] = ((time.process_time() - t) / steps, [c["val_ce"] for c in run.curve])
    label = {"none": "fp32", "auto": "bf16 autocast" if use_bf16("auto", "cpu") else "auto (fp32 here)"}
    steps_at = [c * train["eval_every"] for c in range(len(rows["none"][1]))]
    print(f"target: {cfg['model']}, batch {train['batch_size']} × {cfg['corpus']['seq_len']}, "
          f"{steps} steps; val CE at steps {steps_at}")
    print(f"{'precision':<16}{'CPU s/step':>11}  val CE")
    for kind, (s, curve) in rows.items():
        print(f"{label[kind]:<16}{s:>11.3f}  " + " ".join(f"{v:.4f}" for v in curve))
    print(f"bf16 / fp32 time: {rows['auto'][0] / rows['none'][0]:.2f}; final val CE difference: "
          f"{rows['auto'][1][-1] - rows['none'][1][-1]:+.4f}")


if __name__ == "__main__":
    main()
