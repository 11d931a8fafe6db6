"""The resumable :class:`Trainer`: backward, clipping, optimiser step, logging and progress.

One step (VPD; SPD is the same loop with other coefficients):

1. one target forward, capturing every site's input (reused as CI input and as the target);
2. causal importances from those inputs; their pre-activations are cut into a leaf so each loss
   of the recipe (:mod:`tl_vpd.recipe`) backpropagates and frees its own graph, and the CI
   network gets one backward at the end with the accumulated gradient;
3. clip component and CI gradients separately, AdamW step, persistent-source ascent.

The lr and p schedules are in :mod:`tl_vpd.schedules`, checkpoint files in
:mod:`tl_vpd.checkpoint`.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tl_vpd.interrupts import StepBoundary, TrainingInterrupted
from tl_vpd import checkpoint
from tl_vpd.adversary import PersistentSources, fused_if_supported
from tl_vpd.allocator import keep_freed_memory
from tl_vpd.components import compiled_sites
from tl_vpd.config import VPDConfig
from tl_vpd.data_stream import DataStream
from tl_vpd.decomposition import Decomposition
from tl_vpd.distributed import setup as setup_distributed
from tl_vpd.evaluate import quick_eval
from tl_vpd.losses import faithfulness_loss
from tl_vpd.precision import autocast_context, use_bf16
from tl_vpd.recipe import step_losses
from tl_vpd.schedules import lr_schedule, p_schedule, warmup_constant

__all__ = ["Callback", "DivergenceError", "NonFiniteLossError", "Trainer", "TrainingInterrupted"]

Callback = Callable[[int, dict, Decomposition], None]


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN/inf. ``.decomposition`` holds the last good state (before the step)."""

    def __init__(self, msg: str, decomposition: Decomposition, step: int):
        super().__init__(msg)
        self.decomposition = decomposition
        self.step = step


class DivergenceError(NonFiniteLossError):
    """The faithfulness loss grew past ``cfg.divergence_factor`` × the target weights' mean
    square: U V no longer approximates W (the learning rate is almost always too high)."""


class Trainer:
    """State of one decomposition run; :meth:`train` runs it to ``cfg.steps``.

    Arguments:
        model: the target (frozen while training, never modified).
        cfg: the run's hyperparameters; the trainer reads everything from it.
        data: training data (see :func:`tl_vpd.decompose`).
        eval_data: data for periodic evaluation (every ``cfg.eval_every`` steps).
        callbacks: ``fn(step, metrics, decomposition)`` after every logged step.
        run_dir: where checkpoints and the final decomposition go (``None``: nowhere).
    """

    def __init__(self, model, cfg: VPDConfig, data, *, eval_data=None,
                 callbacks: Sequence[Callback] = (), run_dir=None):
        self.cfg, self.model = cfg, model
        self.shard = setup_distributed()
        if cfg.batch_size % self.shard.world:
            raise ValueError(f"batch_size={cfg.batch_size} is the global batch; it must divide "
                             f"evenly over the {self.shard.world} data-parallel processes")
        self.dec = Decomposition.from_spec(model, cfg.spec, config=cfg)
        mcfg = getattr(model, "cfg", None)
        is_lm = self.dec.backend.language_model
        self.stream = DataStream(data, cfg.batch_size, cfg.seq_len if is_lm else None, cfg.seed,
                                 n_ctx=getattr(mcfg, "n_ctx", None) if is_lm else None,
                                 d_vocab=getattr(mcfg, "d_vocab", None) if is_lm else None)
        self.eval_data = eval_data
        self.recon_kind = cfg.recon_loss if cfg.recon_loss != "auto" else ("kl" if is_lm else "mse")
        self.device = next(iter(self.dec.components.values())).U.device
        keep_freed_memory(self.device)  # every pass's large tensors reuse warm pages on CPU
        self.autocast = use_bf16(cfg.autocast, self.device, is_lm)
        self.callbacks = list(callbacks)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        comps = self.dec.components.values()
        self.component_params = [p for c in comps for p in (c.U, c.V)]
        self.ci_params = list(self.dec.ci_fn.parameters())
        self.optimizer = torch.optim.AdamW(  # fused: one kernel, not ~10 ops per tensor
            [{"params": self.component_params}, {"params": self.ci_params}], lr=cfg.lr,
            weight_decay=cfg.weight_decay, fused=fused_if_supported(self.component_params))
        self.adversary = None
        if cfg.adversary == "persistent":
            self.adversary = PersistentSources(cfg.ppgd_scope, cfg.ppgd_lr, cfg.ppgd_betas,
                                               cfg.ppgd_bank_size, cfg.pgd_init, self.shard)
        self.step = 0
        self.warmup_done = cfg.faithfulness_warmup_steps == 0  # runs whatever coeff_faithfulness is
        self.history: list[dict] = []
        self._wandb = None
        self._committed = False
        self._weight_scale: float | None = None

    # ------------------------------------------------------------------ training
    def train(self) -> Decomposition:
        """Run to ``cfg.steps`` (from the current step) and return the decomposition.

        Ctrl-C or SIGTERM stops after the current step (:mod:`tl_vpd.interrupts`); any error
        during training first checkpoints the last complete step (with a ``run_dir``), then
        propagates.
        """
        cfg = self.cfg
        frozen = [p for p in self.model.parameters() if p.requires_grad]
        for p in frozen:  # scoped: the target is frozen only while training
            p.requires_grad_(False)
        bar = None
        try:
            with StepBoundary("decompose", quiet=not self.shard.is_main) as stop:
                if not self.warmup_done:
                    self._faithfulness_warmup()
                self._init_wandb()
                bar = tqdm(total=cfg.steps, initial=self.step, desc="decompose", dynamic_ncols=True,
                           disable=not (cfg.progress and self.shard.is_main))
                while self.step < cfg.steps:
                    self._run_one_step(bar)
                    if self._stop_requested(stop):
                        path = self._checkpoint_on_failure()
                        where = f"; checkpoint saved to {path} (resume with resume=True)" if path else ""
                        raise TrainingInterrupted(f"interrupted at step {self.step}{where}",
                                                  stop.signum, self.step, path)
        except TrainingInterrupted:
            raise
        except BaseException:
            self._checkpoint_on_failure()
            raise
        finally:
            if bar is not None:
                bar.close()
            for p in frozen:
                p.requires_grad_(True)
            if self._wandb is not None:
                self._wandb.finish()
        self.dec.history = self.history
        if self.run_dir is not None:
            self.save_checkpoint()
            if self.shard.is_main:  # written beside, then renamed: never half a decomposition
                final = self.run_dir / checkpoint.DECOMPOSITION_DIR
                tmp = final.with_name(final.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                self.dec.save(tmp)
                shutil.rmtree(final, ignore_errors=True)
                tmp.rename(final)
        return self.dec

    def _run_one_step(self, bar) -> None:
        """Draw a batch, train on it, then evaluate / log / checkpoint as configured.

        Until the optimiser step is applied, an error leaves the trainer as it was at the
        start of the step (its generators and data position are put back), so a checkpoint
        taken then resumes exactly.
        """
        cfg = self.cfg
        boundary = self._boundary_state()
        self._committed = False
        try:
            metrics = self.train_step(self.shard.take(self.stream.next()))
        except BaseException:
            if not self._committed:
                self._restore_boundary(boundary)
                raise
            self.step += 1  # it failed after the step was applied: the step is complete
            raise
        self.step += 1
        bar.update(1)
        evaluated = bool(cfg.eval_every and self.eval_data is not None
                         and self.step % cfg.eval_every == 0)
        if evaluated:  # an eval row is always recorded, whether or not it is a log step
            metrics.update({f"eval/{k}": v for k, v in
                            quick_eval(self.dec, self.eval_data, cfg, self.recon_kind).items()})
        if evaluated or (cfg.log_every and (self.step % cfg.log_every == 0 or self.step == cfg.steps)):
            self._log(metrics, bar)
        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.run_dir:
            self.save_checkpoint()

    def _stop_requested(self, stop: StepBoundary) -> bool:
        """Whether any rank got a stop signal (all ranks then stop after the same step)."""
        if not self.shard.enabled:
            return stop.requested
        flag = torch.tensor([1.0 if stop.requested else 0.0], device=self.device)
        self.shard.mean_([flag])
        if flag.item() > 0 and stop.signum is None:
            stop.request()
        return flag.item() > 0

    def _boundary_state(self) -> dict:
        """The cheap part of the state a step changes before its optimiser step: generators and
        the data position (parameters only change at the optimiser step)."""
        return {"generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                "stream": self.stream.state_dict()}

    def _restore_boundary(self, boundary: dict) -> None:
        self.generator.set_state(boundary["generator"])
        torch.set_rng_state(boundary["torch_rng"])
        try:
            self.stream.load_state_dict(boundary["stream"])
        except ValueError:  # a plain iterable cannot be rewound (nor resumed): nothing to restore
            pass

    def _checkpoint_on_failure(self) -> Path | None:
        """Save the last complete step after an error or a stop; ``None`` without a run_dir.
        A failure to save is reported, not raised (the original error matters more)."""
        if self.run_dir is None or not self.shard.is_main:
            return None
        try:
            path = self.save_checkpoint(collective=False)
        except Exception as err:  # noqa: BLE001 - reported, the original error propagates
            print(f"\ncould not save a checkpoint at step {self.step}: {err}", file=sys.stderr)
            return None
        print(f"\ncheckpoint of step {self.step} saved to {path}", file=sys.stderr)
        return path

    def _faithfulness_warmup(self) -> None:
        """Fit U V to W alone for a few hundred steps before the main loop (VPD paper)."""
        cfg = self.cfg
        opt = torch.optim.AdamW(self.component_params, lr=cfg.faithfulness_warmup_lr,
                                weight_decay=cfg.faithfulness_warmup_weight_decay)
        comps = list(self.dec.components.values())
        for _ in range(cfg.faithfulness_warmup_steps):
            opt.zero_grad(set_to_none=True)
            loss = faithfulness_loss([c.delta for c in comps])
            loss.backward()
            opt.step()
        self.warmup_done = True
        self.history.append({"step": 0, "warmup/faithfulness": loss.item()})

    def _amp(self):
        """A fresh autocast context for a forward pass (``cfg.autocast``; see :class:`VPDConfig`)."""
        return autocast_context(self.device, self.autocast)

    def _check_divergence(self, loss: torch.Tensor) -> None:
        """Stop when Δ = W − U V has grown far past W itself (a loss exploding without NaN)."""
        factor = self.cfg.divergence_factor
        if not factor:
            return
        if self._weight_scale is None:  # the mean square of the target's decomposed weights
            self._weight_scale = faithfulness_loss(
                [self.dec.target_weight(n) for n in self.dec.sites]).item()
        value = loss.item()
        if value > factor * max(self._weight_scale, 1e-30):
            raise DivergenceError(
                f"training diverged at step {self.step}: the faithfulness loss is {value:.3g}, "
                f"over {factor:g} × the target weights' mean square ({self._weight_scale:.3g}); "
                f"lower lr (now {self.cfg.lr:g}) or raise divergence_factor (0 turns this check "
                "off)", self.dec, self.step)

    def train_step(self, batch) -> dict:
        """One optimisation step on ``batch``; returns the losses as floats."""
        cfg, dec = self.cfg, self.dec
        lr = lr_schedule(self.step, cfg.steps, cfg.lr, cfg.lr_warmup_steps, cfg.lr_final_frac)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        ppgd_lr = warmup_constant(self.step, cfg.steps, cfg.ppgd_lr, cfg.ppgd_lr_warmup_frac)
        if self.adversary is not None:  # a pure function of the step: resumes set the same lr
            self.adversary.set_lr(ppgd_lr)
        p = p_schedule(self.step, cfg.steps, cfg.p_start, cfg.p_end,
                       cfg.p_anneal_start_frac, cfg.p_anneal_end_frac)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad(), self._amp():
            target, inputs = dec.run_target(batch)
        drawn: dict[str, list[torch.Tensor]] = {}
        with compiled_sites(dec.components.values(), cfg.compile, dec.ci_fn):
            with self._amp():
                ci = dec.ci(inputs)
            # The leaf the losses differentiate: fp32 even under autocast (masks and minimality
            # are elementwise math over every token and subcomponent, where bf16 would lose
            # precision).
            pre = {k: v.detach().float().requires_grad_(True) for k, v in ci.pre.items()}
            for name, coeff, loss in step_losses(
                    cfg, dec, batch, target, pre, p=p, recon_kind=self.recon_kind,
                    generator=self.generator, shard=self.shard, adversary=self.adversary,
                    amp=self._amp):
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"the {name} loss is {loss.item()} at step {self.step}; the decomposition"
                        " keeps its last good state (this step is not applied)", dec, self.step)
                if name == "faithfulness":
                    self._check_divergence(loss)
                (coeff * loss).backward()  # frees this loss's graph before the next forward
                drawn.setdefault(name, []).append(loss.detach())
            grads = [(ci.pre[k], pre[k].grad.to(ci.pre[k].dtype))
                     for k in pre if pre[k].grad is not None]
            if grads:
                torch.autograd.backward([t for t, _ in grads], [g for _, g in grads])
        if self.shard.enabled:  # data parallel: average gradients across ranks
            params = self.component_params + self.ci_params
            for q in params:
                if q.grad is None:
                    q.grad = torch.zeros_like(q)
            self.shard.mean_([q.grad for q in params])
        if cfg.grad_clip_components is not None:
            torch.nn.utils.clip_grad_norm_(self.component_params, cfg.grad_clip_components)
        if cfg.grad_clip_ci is not None:
            torch.nn.utils.clip_grad_norm_(self.ci_params, cfg.grad_clip_ci)
        self.optimizer.step()
        self._committed = True
        if self.adversary is not None:
            self.adversary.ascend()
        losses = {name: _logged(values) for name, values in drawn.items()}
        with torch.no_grad():
            losses["l0"] = sum((g > 0).float().sum(-1).mean() for g in pre.values())
        names = list(losses)
        values = torch.stack([losses[k].float().reshape(()) for k in names])
        self.shard.mean_([values])
        out = dict(zip(names, values.tolist()))
        out.update(lr=lr, p=p, step=self.step + 1)
        if self.adversary is not None:
            out["ppgd_lr"] = ppgd_lr
        return out

    # ------------------------------------------------------------------ logging
    def _log(self, metrics: dict, bar) -> None:
        self.history.append(metrics)
        for cb in self.callbacks:  # on every rank: a callback may use collectives
            cb(self.step, metrics, self.dec)
        if not self.shard.is_main:
            return
        shown = {k: metrics[k] for k in ("stochastic", "adversarial", "faithfulness", "l0") if k in metrics}
        bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)
        if self._wandb is not None:
            self._wandb.log(metrics, step=self.step)

    def _init_wandb(self) -> None:
        if self.cfg.wandb_project and self._wandb is None and self.shard.is_main:
            import wandb  # optional dependency, imported only when asked for

            self._wandb = wandb.init(project=self.cfg.wandb_project, config=self.cfg.to_dict())

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything but the decomposition that a resumed run needs to continue identically."""
        return {
            "step": self.step,
            "warmup_done": self.warmup_done,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "stream": self.stream.state_dict(),
            "adversary": None if self.adversary is None else self.adversary.state_dict(),
            "history": self.history,
        }

    def save_checkpoint(self, collective: bool = True) -> Path:
        """Write ``run_dir/checkpoints/step_{k}/`` (see :func:`tl_vpd.checkpoint.save_checkpoint`)."""
        if self.run_dir is None:
            raise ValueError("no run_dir to save checkpoints to")
        return checkpoint.save_checkpoint(
            self.run_dir, self.step, self.dec,
            self.state_dict() if self.shard.is_main else None, self.shard,
            rank_state=self.adversary.state_dict() if self._per_rank_adversary() else None,
            collective=collective, keep=self.cfg.keep_checkpoints)

    def _per_rank_adversary(self) -> bool:
        """Per-token persistent sources differ by rank: each rank checkpoints its own shard."""
        return self.shard.enabled and self.adversary is not None and self.cfg.ppgd_scope == "per_token"

    def load_checkpoint(self, path: str | Path | None = None) -> Path:
        """Restore a checkpoint into this trainer: ``path``, or the newest valid one of
        ``run_dir`` (damaged newer ones are skipped with a warning). Returns the one used."""
        if path is None and self.run_dir is None:
            raise ValueError("resume needs a run_dir")
        path, loaded, state, rank_state = checkpoint.load_newest_valid(
            [Path(path)] if path is not None else checkpoint.checkpoints(self.run_dir),
            self.model, self.shard)
        self.dec.load_state_dict(loaded.state_dict())
        self.step = state["step"]
        self.warmup_done = state["warmup_done"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.stream.load_state_dict(state["stream"])
        if self._per_rank_adversary():
            if rank_state is not None:
                self.adversary.load_state_dict(rank_state)
        elif self.adversary is not None and state["adversary"] is not None:
            self.adversary.load_state_dict(state["adversary"])
        self.history = list(state["history"])
        return path


def _logged(values: list[torch.Tensor]) -> torch.Tensor:
    """The logged value of a loss drawn once or several times in a step: the value, or the
    mean over its draws (stochastic samples, layerwise sites)."""
    if len(values) == 1:
        return values[0]
    return torch.tensor(sum(v.item() for v in values) / len(values))
