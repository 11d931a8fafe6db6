"""Shared pieces of the benchmark scripts: the benchmark model and a timer."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time

import torch


def bench_model(d_model=128, n_layers=4, n_heads=4, d_mlp=512, n_ctx=128, d_vocab=4096, seed=0,
                act_fn="gelu", gated=False):
    """The benchmark target: a LLaMA-style 4-layer model like the VPD paper's, scaled down
    (``gated=True, act_fn="silu"``: the gated SiLU MLP, 28 decomposed matrices)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig  # TL 3.x only

    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads,
        d_mlp=d_mlp, n_ctx=n_ctx, d_vocab=d_vocab, act_fn=act_fn, gated_mlp=gated,
        normalization_type="RMS",
        positional_embedding_type="rotary", final_rms=True, seed=seed)
    model = HookedTransformer(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def timeit(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timeit_interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Median seconds per function, running the functions in interleaved rounds so that load
    from other processes on a shared machine hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def no_grad(fn):
    """``fn`` wrapped to run under ``torch.no_grad()``."""
    def run():
        with torch.no_grad():
            fn()
    return run


def random_masks(dec, B: int, T: int, seed: int = 0):
    """Uniform per-token masks ``{site: [B, T, C]}`` and Δ masks ``{site: [B, T]}``."""
    g = torch.Generator().manual_seed(seed)
    masks = {n: torch.rand(B, T, c.C, generator=g) for n, c in dec.components.items()}
    dmasks = {n: torch.rand(B, T, generator=g) for n in dec.sites}
    return masks, dmasks


def time_masked_forward(model, dec, toks, masks, dmasks, reps: int) -> dict:
    """Median seconds of the plain forward, the hooked masked forward and the masked
    forward + backward, timed in interleaved rounds."""
    def fwd_bwd():
        ms = {k: v.clone().requires_grad_(True) for k, v in masks.items()}
        dec.run_masked(toks, ms, dmasks).float().logsumexp(-1).mean().backward()

    return timeit_interleaved({"plain": no_grad(lambda: model(toks)),
                               "masked": no_grad(lambda: dec.run_masked(toks, masks, dmasks)),
                               "masked_bwd": fwd_bwd}, reps)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")
