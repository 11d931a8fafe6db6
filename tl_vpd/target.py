"""The target model: a small LLaMA-style HookedTransformer trained from scratch, saved and reloaded
(on TransformerLens 4, which has no HookedTransformer, a native TransformerBridge of the same
architecture: :mod:`tl_vpd.target_model`).

The VPD paper decomposes a 4-layer LLaMA-style model; this is the same architecture scaled down
so it trains on 2 CPU cores: RMSNorm, rotary embeddings, a non-gated GELU MLP. A run directory
holds everything needed to rebuild the model (file names: :mod:`tl_vpd.layout`)::

    run_dir/config.json              arguments of target_config
    run_dir/model.safetensors        final weights
    run_dir/curve.json               [{"step", "tokens_seen", "val_ce"}, ...]
    run_dir/tokenizer.json           if a tokenizer was given
    run_dir/checkpoints/step_{k}.safetensors   weights at each evaluation
    run_dir/checkpoints/state_{k}.pt           optimiser, data position and curve (resume)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn
from tqdm.auto import tqdm

from tl_vpd import atomic
from tl_vpd._typing import Int
from tl_vpd.allocator import keep_freed_memory
from tl_vpd.data.corpus import load_from_hub, local_path
from tl_vpd.data.tokenizer import load_tokenizer, save_tokenizer
from tl_vpd.data_stream import DataStream
from tl_vpd.identity import data_fingerprint
from tl_vpd.interrupts import StepBoundary, TrainingInterrupted
from tl_vpd.layout import (
    CHECKPOINT_DIR,
    TARGET_CONFIG_FILE,
    TARGET_CURVE_FILE,
    TARGET_MODEL_FILE,
    TOKENIZER_FILE,
)
from tl_vpd.precision import autocast_context, use_bf16
from tl_vpd.schedules import lr_schedule
from tl_vpd.target_checkpoint import restore as _restore
from tl_vpd.target_checkpoint import save_model as _save_model
from tl_vpd.target_checkpoint import save_state as _save_state
from tl_vpd.target_model import HookedTransformer, TargetConfig, build_model, load_weights, model_config

__all__ = [
    "CONFIG_FILE",
    "CURVE_FILE",
    "MODEL_FILE",
    "TargetRun",
    "load_pretrained",
    "load_target",
    "target_config",
    "train_target",
]

CONFIG_FILE, MODEL_FILE, CURVE_FILE = TARGET_CONFIG_FILE, TARGET_MODEL_FILE, TARGET_CURVE_FILE

# The arguments of target_config that config.json stores; everything else follows from them.
_CONFIG_ARGS = ("d_vocab", "d_model", "n_layers", "n_heads", "d_mlp", "n_ctx", "seed")


def target_config(
    d_vocab: int,
    d_model: int = 128,
    n_layers: int = 4,
    n_heads: int = 4,
    d_mlp: int | None = None,
    n_ctx: int = 128,
    seed: int = 0,
) -> TargetConfig:
    """Config of a LLaMA-style target: RMSNorm, rotary embeddings, non-gated GELU MLP.

    Arguments:
        d_vocab: Vocabulary size (the tokenizer's).
        d_model: Residual stream width.
        n_layers: Number of transformer blocks (4 as in the VPD paper).
        n_heads: Attention heads per layer; ``d_head = d_model // n_heads``.
        d_mlp: MLP hidden width; ``None`` means ``4 * d_model``.
        n_ctx: Maximum sequence length.
        seed: Seed of the weight initialisation (``cfg.seed``).

    Returns:
        The ``HookedTransformerConfig`` (a ``TransformerBridgeConfig`` on TransformerLens 4).
    """
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}.")
    d_head = d_model // n_heads
    # seed is set after construction (model_config): passing seed= makes HookedTransformerConfig
    # reseed the global RNGs as a side effect. The model still initialises from cfg.seed.
    return model_config(
        n_layers=n_layers,
        d_model=d_model,
        n_ctx=n_ctx,
        d_head=d_head,
        n_heads=n_heads,
        d_mlp=4 * d_model if d_mlp is None else d_mlp,
        d_vocab=d_vocab,
        act_fn="gelu",
        gated_mlp=False,
        normalization_type="RMS",
        final_rms=True,
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        default_prepend_bos=False,
        tokenizer_name=None,
        seed=seed,
    )


def _config_args(cfg: TargetConfig) -> dict[str, int]:
    """The target_config arguments that rebuild ``cfg``; raises if ``cfg`` is not of that form."""
    args = {name: getattr(cfg, name) for name in _CONFIG_ARGS}
    rebuilt = target_config(**args).to_dict()
    differing = sorted(
        key for key, value in cfg.to_dict().items() if key != "device" and rebuilt.get(key) != value
    )
    if differing:
        raise ValueError(
            "train_target saves configs built by target_config, and this one differs from "
            f"target_config(**{args}) in {differing}. Build it with tl_vpd.target.target_config, "
            "or train without run_dir."
        )
    return args


def _lr_factor(step: int, warmup_steps: int, total_steps: int, final_fraction: float = 0.1) -> float:
    """Linear warmup to 1 (non-zero from the first step), then cosine decay to
    ``final_fraction`` at ``total_steps``: :func:`tl_vpd.schedules.lr_schedule` as a factor."""
    return lr_schedule(step, total_steps, 1.0, warmup_steps, final_fraction, warmup_offset=1)


@torch.no_grad()
def _mean_ce(model: nn.Module, batches: list[torch.Tensor]) -> float:
    """Mean next-token cross-entropy over all predicted positions of ``batches``."""
    total, count = 0.0, 0
    for batch in batches:
        per_token = model(batch, return_type="loss", loss_per_token=True)
        total += per_token.sum().item()
        count += per_token.numel()
    return total / count


def _write_json(obj: object, path: Path) -> None:
    atomic.write_text(path, json.dumps(obj, indent=2) + "\n")


@dataclass
class TargetRun:
    """A trained target model, its validation curve and where it was saved."""

    model: nn.Module
    curve: list[dict]
    run_dir: Path | None = None

    def __repr__(self) -> str:
        cfg = self.model.cfg
        arch = f"{cfg.n_layers}L d_model={cfg.d_model} d_mlp={cfg.d_mlp} vocab={cfg.d_vocab}"
        ce = ""
        if self.curve:
            first, last = self.curve[0], self.curve[-1]
            ce = (
                f", val_ce {first['val_ce']:.3f} (step {first['step']})"
                f" -> {last['val_ce']:.3f} (step {last['step']})"
            )
        return f"TargetRun({arch}{ce}, run_dir={str(self.run_dir) if self.run_dir else None})"


def train_target(
    cfg: TargetConfig,
    train_tokens: Int[torch.Tensor, "n_train seq"],
    val_tokens: Int[torch.Tensor, "n_val seq"],
    *,
    steps: int = 1200,
    batch_size: int = 32,
    lr: float = 3e-3,
    warmup_steps: int = 100,
    weight_decay: float = 0.1,
    grad_clip: float = 1.0,
    eval_every: int = 100,
    eval_batches: int = 8,
    run_dir: str | Path | None = None,
    tokenizer: Tokenizer | None = None,
    seed: int = 0,
    progress: bool = True,
    resume: bool = False,
    autocast: str = "auto",
) -> TargetRun:
    """Train a ``HookedTransformer(cfg)`` from random initialisation on token blocks.

    AdamW with linear warmup then cosine decay to 10% of ``lr``, gradient clipping, weight decay
    on weight matrices only (the VPD paper's target recipe, scaled down). The defaults train the
    default target on the default corpus (1.6 epochs of its ~3M tokens) in about 11 minutes on 2
    idle CPU cores in fp32 (~0.53 s per step, ~1.5 s per evaluation); bf16 autocast (the default
    where it is native) takes ~0.6× the CPU time per step with the same validation curve
    (``benchmarks/target_precision.py``). On CPU a seed gives the same weights in one process at
    one thread; with more threads, runs in separate processes can differ in the last bits (the
    validation CE by ~1e-5).

    Arguments:
        cfg: Model config, normally from :func:`target_config`.
        train_tokens: Training blocks; ``seq`` must not exceed ``cfg.n_ctx``.
        val_tokens: Validation blocks.
        steps: Optimiser steps.
        batch_size: Blocks per step.
        lr: Peak learning rate.
        warmup_steps: Steps of linear warmup.
        weight_decay: AdamW weight decay of the weight matrices.
        grad_clip: Maximum global gradient norm.
        eval_every: Validate (and checkpoint) every this many steps, plus at step 0 and the end.
        eval_batches: Fixed validation batches of ``batch_size`` blocks used for each evaluation.
        run_dir: If given, save config, tokenizer, checkpoints, curve and final model here.
        tokenizer: Saved into ``run_dir`` so the run is self-contained.
        seed: Seed of the batch order and the validation subset (initialisation uses ``cfg.seed``,
            or this seed when that is ``None``).
        progress: Show a progress bar.
        autocast: ``"auto"`` (bf16 autocast of the forward where bf16 matmuls are native, see
            :mod:`tl_vpd.precision`; ~0.6× the fp32 step on this project's CPU), ``"none"`` (fp32)
            or ``"bfloat16"``. Weights, optimiser and loss stay fp32; validation runs in fp32.
        resume: Continue the unfinished run in ``run_dir`` from its newest checkpoint (made at
            each evaluation and on Ctrl-C/SIGTERM); with the same arguments and data the result
            equals an uninterrupted run's. Without a checkpoint it starts from the beginning.

    Returns:
        The :class:`TargetRun`. Ctrl-C or SIGTERM stops after the current step, saves a
        checkpoint to ``run_dir`` and raises :class:`~tl_vpd.interrupts.TrainingInterrupted`.
    """
    seq = train_tokens.shape[1]
    if seq > cfg.n_ctx:
        raise ValueError(f"Token blocks have {seq} positions but cfg.n_ctx is {cfg.n_ctx}.")
    for name, tokens in (("train_tokens", train_tokens), ("val_tokens", val_tokens)):
        if tokens.numel() and int(tokens.max()) >= cfg.d_vocab:
            raise ValueError(f"{name} has token id {int(tokens.max())} >= cfg.d_vocab={cfg.d_vocab}.")
    if len(val_tokens) == 0:
        raise ValueError("val_tokens is empty; validation needs at least one block.")
    if steps <= 0 or eval_every <= 0:
        raise ValueError(f"steps ({steps}) and eval_every ({eval_every}) must be positive.")
    if batch_size <= 0 or batch_size > len(train_tokens):
        raise ValueError(f"batch_size={batch_size} must be in [1, {len(train_tokens)}] (the training blocks).")
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run_dir of the run to continue.")
    # What a resumed run must share with the one it continues.
    identity = dict(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                    weight_decay=weight_decay, grad_clip=grad_clip, eval_every=eval_every,
                    eval_batches=eval_batches, seed=seed,
                    data=[data_fingerprint(train_tokens), data_fingerprint(val_tokens)])

    run_path = None if run_dir is None else Path(run_dir)
    if run_path is not None:
        if (run_path / MODEL_FILE).exists() or ((run_path / CURVE_FILE).exists() and not resume):
            # Mixing this run's checkpoints with another's would make load_target lie.
            raise FileExistsError(
                f"{run_path} already holds a run ({'finished' if (run_path / MODEL_FILE).exists() else 'unfinished: pass resume=True to continue it'}); "
                "pick a new run_dir or delete it."
            )
        (run_path / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        args = _config_args(cfg)
        if resume and (run_path / CONFIG_FILE).is_file() and json.loads((run_path / CONFIG_FILE).read_text()) != args:
            raise ValueError(f"{run_path / CONFIG_FILE} was written for another model config; "
                             "resume only continues the same run.")
        _write_json(args, run_path / CONFIG_FILE)
        if tokenizer is not None:
            save_tokenizer(tokenizer, run_path / TOKENIZER_FILE)

    torch.manual_seed(seed)
    model = build_model(cfg)
    device = next(model.parameters()).device
    keep_freed_memory(device)  # on CPU each step's logits reuse warm pages (tl_vpd/allocator.py)
    bf16 = use_bf16(autocast, device)
    identity["precision"] = "bfloat16" if bf16 else "float32"  # a resumed run computes alike
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.95),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup_steps, steps))

    generator = torch.Generator().manual_seed(seed)
    val_subset = val_tokens[torch.randperm(len(val_tokens), generator=generator)[: eval_batches * batch_size]]
    val_batches = [b.to(device) for b in val_subset.split(batch_size)]
    # The shuffled order trained targets were always made with (see iterate_batches).
    stream = DataStream(train_tokens, batch_size, None, seed, shuffle="chained")
    curve: list[dict] = []
    start = 0
    if resume:
        start, curve = _restore(run_path, identity, model, optimizer, scheduler, stream)

    def save_state(step: int) -> None:
        if run_path is not None:
            _save_model(model, run_path / CHECKPOINT_DIR / f"step_{step}.safetensors")
            _save_state(run_path, step, dict(identity=identity, curve=curve, stream=stream.state_dict(),
                                             optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict()))

    def evaluate(step: int) -> None:
        val_ce = _mean_ce(model, val_batches)
        curve.append({"step": step, "tokens_seen": step * batch_size * seq, "val_ce": val_ce})
        save_state(step)
        if run_path is not None:
            _write_json(curve, run_path / CURVE_FILE)

    bar = tqdm(range(start + 1, steps + 1), desc="training target", disable=not progress)
    with StepBoundary("target training") as stop:
        if start == 0:
            evaluate(0)
        for step in bar:
            with autocast_context(device, bf16):
                loss = model(stream.next().to(device), return_type="loss").float()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"Training loss is {loss.item()} at step {step}; lower lr ({lr}).")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            scheduler.step()
            if step % eval_every == 0 or step == steps:
                evaluate(step)
            bar.set_postfix(loss=f"{loss.item():.3f}", val_ce=f"{curve[-1]['val_ce']:.3f}", refresh=False)
            if stop.requested and step < steps:
                bar.close()
                if curve[-1]["step"] != step:
                    save_state(step)  # the curve keeps only evaluations: nothing new in curve.json
                where = f"; checkpoint in {run_path / CHECKPOINT_DIR}" if run_path else ""
                raise TrainingInterrupted(f"target training interrupted at step {step}{where}",
                                          stop.signum, step, run_path)
    bar.close()
    if run_path is not None:
        # Only a finished run writes model.safetensors: to every reader it means "fully trained".
        _save_model(model, run_path / MODEL_FILE)
        _write_json(curve, run_path / CURVE_FILE)
    return TargetRun(model=model, curve=curve, run_dir=run_path)


def load_target(run_dir: str | Path) -> tuple[nn.Module, Tokenizer | None, list[dict]]:
    """Rebuild a target saved by :func:`train_target`.

    Arguments:
        run_dir: The run directory.

    Returns:
        ``(model, tokenizer or None, curve)``; the curve is empty if ``curve.json`` is missing.
    """
    run_path = Path(run_dir)
    missing = [name for name in (CONFIG_FILE, MODEL_FILE) if not (run_path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{run_path} is not a complete target run: missing {missing}. "
            "train_target(..., run_dir=...) writes the model only when training finishes (an "
            "interrupted run keeps its weights in checkpoints/ and is not a target)."
        )
    args = json.loads((run_path / CONFIG_FILE).read_text())
    unknown = sorted(set(args) - set(_CONFIG_ARGS))
    if unknown:
        raise ValueError(
            f"{run_path / CONFIG_FILE} has unknown keys {unknown}; expected {list(_CONFIG_ARGS)}."
        )
    model = build_model(target_config(**args))
    # Either TransformerLens's layout: a target trained on one version loads on the other.
    load_weights(model, load_file(str(run_path / MODEL_FILE), device=str(model.cfg.device)))
    tokenizer = load_tokenizer(run_path) if (run_path / TOKENIZER_FILE).is_file() else None
    curve = json.loads((run_path / CURVE_FILE).read_text()) if (run_path / CURVE_FILE).is_file() else []
    return model, tokenizer, curve


def load_pretrained(name: str, **kwargs) -> HookedTransformer:
    """``HookedTransformer.from_pretrained_no_processing(name)``, failing fast instead of hanging.

    The rules of :func:`tl_vpd.data.corpus.load_from_hub`: online, an unreachable hub raises
    ``ConnectionError`` at once; in offline mode (``HF_HUB_OFFLINE=1``) the model is read from the
    local Hugging Face cache without touching the network, and one not cached raises
    ``ConnectionError`` naming it.

    Arguments:
        name: A TransformerLens model name, e.g. ``"gpt2"``. A local path (``./run``, ``/...``,
            ``~/...``, ``*.safetensors``) is refused: ``FileNotFoundError`` if it does not exist,
            else ``ValueError`` pointing to :func:`load_target`.
        **kwargs: Passed on to ``from_pretrained_no_processing``.

    Returns:
        The model with unprocessed weights (no LayerNorm folding or centering), so its parameters
        are those of the original checkpoint.
    """

    if local_path(name, by_folder=False) is not None:
        raise ValueError(f"{name!r} is a local path; load_pretrained takes TransformerLens model "
                         "names (e.g. 'gpt2'). For a target trained here use load_target(run_dir).")
    return load_from_hub(f"model {name!r}",
                         lambda: HookedTransformer.from_pretrained_no_processing(name, **kwargs))
