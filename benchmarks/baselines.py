"""VPD against per-layer TopK transcoders (PLTs) on one tiny target: the VPD paper's sparsity vs
reconstruction comparison and its capacity sweep (feature splitting).

    python benchmarks/baselines.py --quick            # ~3 minutes on one CPU thread
    python benchmarks/baselines.py --size mid         # the quick target, 1000 VPD steps
    python benchmarks/baselines.py --out base.json    # the full sizes (much longer)

Target: a 2-layer LLaMA-style model (RMSNorm, rotary, GELU MLP) trained on the standard-library
corpus. VPD decomposes the MLP matrices only (``blocks.*.mlp.*``: W_in and W_out), with the
``configs/quick_vpd.yaml`` recipe, so both methods replace exactly the MLPs. Every number is
measured on the same validation batches (``tl_vpd.evaluate.evaluate`` for VPD,
``tl_vpd.baselines.evaluate_transcoders`` for the transcoders: the same metric code and stream).

Table 1 (Pareto, the paper's section "Comparison with transcoders"): CE degradation (CE − target
CE) and KL to the target when every MLP is replaced at once (transcoders: each reads the spliced
model; VPD: its masked MLPs, Δ off, under rounded CI > 0 or CI as mask), against L0 = active
latents / subcomponents per token summed over the MLP layers, L0 per module (per MLP for a
transcoder, per matrix for VPD: the paper's measure (a)) and active parameters per token
(measure (c): a latent has 2·d_model, a subcomponent of W_in or W_out d_model + d_mlp). "*" marks
points no other point beats in both L0 and CE degradation.

Table 2 (capacity sweep, section "No feature splitting"): VPD at C ×0.5, ×1, ×2, ×4 and
transcoders with as many latents per MLP as VPD has subcomponents per MLP (2·C) at the same
multiples. alive: VPD's mean CI > 1e-6 (the paper's count); for transcoders, latents active on
some evaluated token (the paper: at least once per 1M tokens). split vs ×1: the paper's
geometric splitting measure (its appendix on feature splitting): the fraction of the ×1 model's
alive objects with more than one match (cosine > 0.5 between output directions: decoder rows;
VPD's W_out U columns, up to sign) among the alive objects of the ×m model, averaged over layers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import tl_vpd
from tl_vpd.baselines import evaluate_transcoders, mean_split_fraction, train_transcoders
from tl_vpd.evaluate import evaluate
from tl_vpd.pipeline import packaged_config
from tl_vpd.report import ALIVE_THRESHOLD
from tl_vpd.tables import text_table

SIZES = {
    "quick": dict(seq_len=32, vocab=512, max_bytes=400_000, d_model=32, d_mlp=128,
                  target_steps=200, C=16, vpd_steps=150, vpd_batch=8, tc_steps=400,
                  tc_batch=16, tc_lr=3e-3, capacity_k=8, pareto_k=(2, 16), pareto_mult=(1,),
                  multiples=(0.5, 1, 2, 4), eval_batches=4, eval_batch=16),
    # The quick target with runs long enough for the frequency term to prune (alive < C).
    "mid": dict(seq_len=32, vocab=512, max_bytes=400_000, d_model=32, d_mlp=128,
                target_steps=200, C=32, vpd_steps=1000, vpd_batch=8, tc_steps=2000,
                tc_batch=16, tc_lr=3e-3, capacity_k=8, pareto_k=(2, 4, 16, 32), pareto_mult=(1,),
                multiples=(0.5, 1, 2, 4), eval_batches=4, eval_batch=16),
    "full": dict(seq_len=64, vocab=1024, max_bytes=2_000_000, d_model=64, d_mlp=256,
                 target_steps=400, C=64, vpd_steps=2000, vpd_batch=8, tc_steps=4000,
                 tc_batch=32, tc_lr=2e-3, capacity_k=8, pareto_k=(2, 4, 16, 32),
                 pareto_mult=(1, 4), multiples=(0.5, 1, 2, 4), eval_batches=8, eval_batch=16),
}


def vpd_config(size: dict, C: int) -> tl_vpd.VPDConfig:
    """The quick_vpd.yaml recipe on the MLP matrices, at ``C`` subcomponents per matrix."""
    return tl_vpd.VPDConfig.from_file(packaged_config("quick_vpd.yaml")).replace(
        C=C, steps=size["vpd_steps"], batch_size=size["vpd_batch"], seq_len=size["seq_len"],
        sites=("blocks.*.mlp.*",), checkpoint_every=0, log_every=0, eval_every=0, progress=False)


def _eval_kw(size: dict) -> dict:
    return dict(n_batches=size["eval_batches"], batch_size=size["eval_batch"], seed=0,
                progress=False)


def run_vpd(model, train, val, size: dict, mult: float) -> tuple[list[dict], dict, dict]:
    """Decompose at ``mult`` × C; its Pareto rows, its capacity row and its alive W_out U
    columns per layer."""
    C = max(1, round(size["C"] * mult))
    t = time.perf_counter()
    dec = tl_vpd.decompose(model, vpd_config(size, C), train)
    rep = evaluate(dec, val, pgd_steps=(), pgd_batches=0, **_eval_kw(size))
    ce_t = rep.row("target")["ce"]
    params = sum(s["l0"] * (dec.site(s["site"]).d_in + dec.site(s["site"]).d_out)
                 for s in rep.sites)
    rows = [{"method": "VPD", "config": f"C={C} (×{mult:g}), {mode}", "l0": rep.total["l0"],
             "l0_module": rep.total["l0"] / len(rep.sites), "params": params,
             "ce": rep.row(mode)["ce"], "ce_degradation": rep.row(mode)["ce"] - ce_t,
             "kl": rep.row(mode)["kl"], "ce_recovered": rep.row(mode)["ce_recovered"]}
            for mode in ("rounded CI > 0", "CI as mask")]
    cap = {"method": "VPD", "mult": mult, "capacity": rep.total["C"], "alive": rep.total["alive"],
           "fired": rep.total["fired"], "l0": rep.total["l0"],
           "ce_degradation": rows[0]["ce_degradation"], "train_s": time.perf_counter() - t}
    return rows, cap, _vpd_directions(dec, val, size)


def _vpd_directions(dec, val, size: dict) -> dict[int, torch.Tensor]:
    """Per layer, the U columns of W_out's alive subcomponents (mean CI > 1e-6 on the
    evaluation tokens)."""
    tokens = val[: size["eval_batches"] * size["eval_batch"]]
    sums, n = {}, 0
    with torch.no_grad():
        for chunk in tokens.split(size["eval_batch"]):
            for site, g in dec.causal_importance(chunk).items():
                sums[site] = sums.get(site, 0) + g.flatten(0, -2).double().sum(0)
            n += chunk.numel()
    out = {}
    for site, s in sums.items():
        if site.endswith("mlp.W_out"):
            layer = dec.site(site).layer
            out[layer] = dec.components[site].U.detach().T[s / n > ALIVE_THRESHOLD]
    return out


def run_transcoders(model, train, val, size: dict, mult: float, k: int
                    ) -> tuple[dict, dict, dict]:
    """Transcoders with ``mult`` × 2C latents per MLP at ``k``; their Pareto row, capacity row
    and alive decoder rows per layer."""
    n_latents = max(1, round(2 * size["C"] * mult))
    t = time.perf_counter()
    tcs = train_transcoders(model, train, n_latents, min(k, n_latents), size["tc_steps"],
                            batch_size=size["tc_batch"], seq_len=size["seq_len"],
                            lr=size["tc_lr"], progress=False)
    rep = evaluate_transcoders(model, tcs, val, **_eval_kw(size))
    r = rep.row("transcoders")
    d_model = model.cfg.d_model
    row = {"method": "transcoder", "config": f"{n_latents} latents/MLP (×{mult:g}), k={k}",
           "l0": rep.total["l0"], "l0_module": rep.total["l0"] / len(tcs.layers),
           "params": rep.total["l0"] * 2 * d_model, "ce": r["ce"],
           "ce_degradation": r["ce_degradation"], "kl": r["kl"], "ce_recovered": r["ce_recovered"]}
    cap = {"method": f"transcoder k={k}", "mult": mult, "capacity": rep.total["n_latents"],
           "alive": rep.total["alive"], "fired": rep.total["alive"], "l0": rep.total["l0"],
           "ce_degradation": r["ce_degradation"], "train_s": time.perf_counter() - t}
    dirs = {layer: tcs[layer].W_dec.detach()[rep.fired[layer]] for layer in tcs.layers}
    return row, cap, dirs


def compare(model, train, val, size: dict, log=print) -> dict:
    """Both tables' rows for one target (the benchmark's core; tests call it on a toy size)."""
    pareto, capacity = [], []
    vpd_dirs, tc_dirs = {}, {}
    for mult in size["multiples"]:
        rows, cap, vpd_dirs[mult] = run_vpd(model, train, val, size, mult)
        pareto += rows
        capacity.append(cap)
        log(f"VPD ×{mult:g}: alive {cap['alive']}/{cap['capacity']}, L0 {cap['l0']:.1f}, "
            f"CE − target {cap['ce_degradation']:.4f} ({cap['train_s']:.0f} s)")
    runs = [(m, size["capacity_k"]) for m in size["multiples"]]
    runs += [(m, k) for m in size["pareto_mult"] for k in size["pareto_k"] if (m, k) not in runs]
    for mult, k in runs:
        row, cap, dirs = run_transcoders(model, train, val, size, mult, k)
        pareto.append(row)
        if k == size["capacity_k"]:
            capacity.append(cap)
            tc_dirs[mult] = dirs
        log(f"transcoder ×{mult:g} k={k}: alive {cap['alive']}/{cap['capacity']}, L0 "
            f"{cap['l0']:.1f}, CE − target {cap['ce_degradation']:.4f} ({cap['train_s']:.0f} s)")
    for cap in capacity:  # splitting of the ×1 model's alive objects in the ×m model
        cap["multiple"] = f"×{cap['mult']:g}"
        dirs, absolute = (vpd_dirs, True) if cap["method"] == "VPD" else (tc_dirs, False)
        if 1 in dirs:
            cap["split"] = mean_split_fraction(
                [(dirs[1][layer], dirs[cap["mult"]][layer]) for layer in dirs[1]],
                absolute=absolute)
        cap["alive_frac"] = cap["alive"] / cap["capacity"]
    mark_pareto(pareto)
    return {"pareto": sorted(pareto, key=lambda r: r["l0"]), "capacity": capacity}


def mark_pareto(rows: list[dict]) -> None:
    """``pareto`` = no other row has L0 and CE degradation both at most this one's, one lower."""
    for r in rows:
        r["pareto"] = "*" if not any(
            o["l0"] <= r["l0"] and o["ce_degradation"] <= r["ce_degradation"]
            and (o["l0"], o["ce_degradation"]) != (r["l0"], r["ce_degradation"])
            for o in rows) else ""


PARETO_COLS = [("pareto", ""), ("method", "method"), ("config", "config"), ("l0", "L0"),
               ("l0_module", "L0/module"), ("params", "active params"),
               ("ce_degradation", "CE − target"), ("kl", "KL"), ("ce_recovered", "CE recovered")]
CAPACITY_COLS = [("method", "method"), ("multiple", "capacity"), ("capacity", "C or latents"),
                 ("alive", "alive"), ("alive_frac", "alive/capacity"),
                 ("split", "split vs ×1"), ("l0", "L0"), ("ce_degradation", "CE − target")]


def tables(result: dict) -> str:
    return ("Table 1: L0 vs CE degradation, every MLP replaced at once\n"
            + text_table(PARETO_COLS, result["pareto"])
            + "\n\nTable 2: capacity sweep (alive objects, feature splitting vs the ×1 model)\n"
            + text_table(CAPACITY_COLS, result["capacity"]))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the small sizes (~3 min on one thread)")
    p.add_argument("--size", choices=sorted(SIZES), help="a size by name (--quick = quick)")
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--cache-dir", help="cache the tokenized corpus here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = SIZES[args.size or ("quick" if args.quick else "full")]
    t = time.perf_counter()
    from sweep import train_tiny_target  # the sweep's target and corpus (run as a script)

    corpus, run = train_tiny_target(size, args.cache_dir)
    print(f"target: val CE {run.curve[0]['val_ce']:.3f} -> {run.curve[-1]['val_ce']:.3f} "
          f"({time.perf_counter() - t:.0f} s)", flush=True)
    result = compare(run.model, corpus.train, corpus.val, size,
                     log=lambda s: print(s, flush=True))
    print("\n" + tables(result))
    print(f"\ntotal {time.perf_counter() - t:.0f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"size": size, **result}, indent=2, default=str))


if __name__ == "__main__":
    main()
