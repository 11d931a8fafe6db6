"""The training loop: :func:`decompose` and the resumable :class:`Trainer` behind it.

One step (VPD; SPD is the same loop with other coefficients):

1. one target forward, capturing every site's input (reused as CI input and as the target);
2. causal importances ``g`` from those inputs; their pre-activations are cut into a leaf so each
   loss below backpropagates and frees its own graph, and the CI network gets one backward at
   the end with the accumulated gradient;
3. Δ-L2 (faithfulness), minimality (importance + frequency, p annealed), stochastic
   reconstruction (sources ``r ~ U(0,1)``, routed), optional layerwise reconstruction (SPD),
   adversarial reconstruction (fresh or persistent PGD, routed);
4. clip component and CI gradients separately, AdamW step, persistent-source ascent.

This module is the only place with I/O: progress bar, wandb, checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from tl_vpd.adversary import PersistentSources, fresh_pgd, init_sources
from tl_vpd.config import VPDConfig
from tl_vpd.data_stream import DataStream
from tl_vpd.decomposition import Decomposition
from tl_vpd.distributed import setup as setup_distributed
from tl_vpd.importance import lower_leaky_sigmoid, upper_leaky_sigmoid
from tl_vpd.losses import (
    faithfulness_loss,
    lr_schedule,
    minimality_loss,
    p_schedule,
    recon_loss,
)
from tl_vpd.masking import masks_from_sources, sample_routing, sample_sources

__all__ = ["NonFiniteLossError", "Trainer", "decompose"]

Callback = Callable[[int, dict, Decomposition], None]
CHECKPOINT_DIR = "checkpoints"
TRAINER_STATE_FILE = "trainer_state.pt"


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN/inf. ``.decomposition`` holds the last good state (before the step)."""

    def __init__(self, msg: str, decomposition: Decomposition, step: int):
        super().__init__(msg)
        self.decomposition = decomposition
        self.step = step


def decompose(
    model: torch.nn.Module,
    cfg: VPDConfig | None = None,
    data=None,
    *,
    eval_data=None,
    callbacks: Sequence[Callback] = (),
    run_dir: str | Path | None = None,
    resume: bool = False,
) -> Decomposition:
    """Train a VPD (or SPD) decomposition of ``model``.

    Arguments:
        model: a ``HookedTransformer`` (or a toy model with ``vpd_sites()``). It is frozen
            during training and never modified.
        cfg: the hyperparameters (default ``VPDConfig()``; presets via ``VPDConfig.preset``).
        data: token ids ``[n, seq]``, an iterable of batches, a ``datasets.Dataset``, or for toy
            models a callable ``data(batch_size, generator)``.
        eval_data: data for periodic evaluation (every ``cfg.eval_every`` steps).
        callbacks: ``fn(step, metrics, decomposition)`` called after every logged step.
        run_dir: where checkpoints (every ``cfg.checkpoint_every`` steps, on Ctrl-C, on a
            non-finite loss, and at the end) and the final decomposition are written.
        resume: continue from the latest checkpoint in ``run_dir``.

    Returns:
        The trained :class:`~tl_vpd.Decomposition` (``.history`` holds the logged metrics).
    """
    cfg = cfg or VPDConfig()
    if data is None:
        raise ValueError("decompose needs data: token ids [n, seq], batches, or a callable")
    trainer = Trainer(model, cfg, data, eval_data=eval_data, callbacks=callbacks, run_dir=run_dir)
    if resume:
        trainer.load_checkpoint()
    return trainer.train()


class Trainer:
    """State of one decomposition run; :meth:`train` runs it to ``cfg.steps``."""

    def __init__(self, model, cfg: VPDConfig, data, *, eval_data=None,
                 callbacks: Sequence[Callback] = (), run_dir=None):
        self.cfg = cfg
        self.model = model
        self.shard = setup_distributed()
        if cfg.batch_size % self.shard.world:
            raise ValueError(f"batch_size={cfg.batch_size} is the global batch; it must divide "
                             f"evenly over the {self.shard.world} data-parallel processes")
        self.dec = Decomposition.from_model(
            model, C=cfg.C, sites=cfg.sites, seed=cfg.seed, ci_fn=cfg.ci_fn,
            ci_hidden=cfg.ci_hidden, ci_d_model=cfg.ci_d_model, ci_n_layers=cfg.ci_n_layers,
            ci_n_heads=cfg.ci_n_heads, init=cfg.init, leaky_alpha=cfg.leaky_alpha,
            dtype=cfg.dtype)
        self.dec.config = cfg
        mcfg = getattr(model, "cfg", None)
        is_lm = self.dec.backend.language_model
        self.stream = DataStream(data, cfg.batch_size, cfg.seq_len if is_lm else None, cfg.seed,
                                 n_ctx=getattr(mcfg, "n_ctx", None) if is_lm else None,
                                 d_vocab=getattr(mcfg, "d_vocab", None) if is_lm else None)
        self.eval_data = eval_data
        self.recon_kind = cfg.recon_loss if cfg.recon_loss != "auto" else ("kl" if is_lm else "mse")
        self.callbacks = list(callbacks)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        comps = self.dec.components.values()
        self.component_params = [p for c in comps for p in (c.U, c.V)]
        self.ci_params = list(self.dec.ci_fn.parameters())
        self.optimizer = torch.optim.AdamW(
            [{"params": self.component_params}, {"params": self.ci_params}],
            lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.adversary = None
        if cfg.adversary == "persistent":
            self.adversary = PersistentSources(cfg.ppgd_scope, cfg.ppgd_lr, cfg.ppgd_betas,
                                               cfg.ppgd_bank_size, cfg.pgd_init, self.shard)
        self.step = 0
        self.warmup_done = cfg.faithfulness_warmup_steps == 0 or cfg.coeff_delta == 0
        self.history: list[dict] = []
        self._wandb = None

    # ------------------------------------------------------------------ training
    def train(self) -> Decomposition:
        cfg = self.cfg
        frozen = [p for p in self.model.parameters() if p.requires_grad]
        for p in frozen:  # scoped: the target is frozen only while training
            p.requires_grad_(False)
        try:
            if not self.warmup_done:
                self._faithfulness_warmup()
            self._init_wandb()
            bar = _progress(cfg.steps, self.step, cfg.progress and self.shard.is_main)
            while self.step < cfg.steps:
                metrics = self.train_step(self.shard.take(self.stream.next()))
                self.step += 1
                bar.update(1)
                if cfg.eval_every and self.eval_data is not None and self.step % cfg.eval_every == 0:
                    from tl_vpd.evaluate import quick_eval

                    metrics.update({f"eval/{k}": v for k, v in
                                    quick_eval(self.dec, self.eval_data, cfg, self.recon_kind).items()})
                if cfg.log_every and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                    self._log(metrics, bar)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.run_dir:
                    self.save_checkpoint()
            bar.close()
        except KeyboardInterrupt:
            if self.run_dir is not None and self.shard.is_main:
                path = self.save_checkpoint(collective=False)
                print(f"\ninterrupted at step {self.step}; checkpoint saved to {path} "
                      "(resume with resume=True)")
            raise
        except NonFiniteLossError:
            if self.run_dir is not None and self.shard.is_main:
                self.save_checkpoint(collective=False)
            raise
        finally:
            for p in frozen:
                p.requires_grad_(True)
            if self._wandb is not None:
                self._wandb.finish()
        self.dec.history = self.history
        if self.run_dir is not None:
            self.save_checkpoint()
            if self.shard.is_main:
                self.dec.save(self.run_dir / "decomposition")
        return self.dec

    def _faithfulness_warmup(self) -> None:
        """Fit U V to W alone for a few hundred steps before the main loop (VPD paper)."""
        cfg = self.cfg
        opt = torch.optim.AdamW(self.component_params, lr=cfg.faithfulness_warmup_lr, weight_decay=0.0)
        comps = list(self.dec.components.values())
        for _ in range(cfg.faithfulness_warmup_steps):
            opt.zero_grad(set_to_none=True)
            loss = faithfulness_loss([c.delta for c in comps])
            loss.backward()
            opt.step()
        self.warmup_done = True
        self.history.append({"step": 0, "warmup/faithfulness": loss.item()})

    def train_step(self, batch) -> dict:
        """One optimisation step on ``batch``; returns the losses as floats."""
        cfg, dec = self.cfg, self.dec
        lr = lr_schedule(self.step, cfg.steps, cfg.lr, cfg.lr_warmup_steps, cfg.lr_final_frac)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        p = p_schedule(self.step, cfg.steps, cfg.p_start, cfg.p_end,
                       cfg.p_anneal_start_frac, cfg.p_anneal_end_frac)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            target, inputs = dec.run_target(batch)
        ci = dec.ci(inputs)
        pre = {k: v.detach().requires_grad_(True) for k, v in ci.pre.items()}

        def lower_view():  # a fresh node per loss, so each backward frees only its own graph
            return {k: lower_leaky_sigmoid(v, cfg.leaky_alpha) for k, v in pre.items()}

        upper = {k: upper_leaky_sigmoid(v, cfg.leaky_alpha) for k, v in pre.items()}
        losses: dict[str, torch.Tensor] = {}

        def take(name: str, coeff: float, loss: torch.Tensor) -> None:
            losses[name] = loss.detach()
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"the {name} loss is {loss.item()} at step {self.step}; the decomposition "
                    "keeps its last good state (this step is not applied)", dec, self.step)
            (coeff * loss).backward()

        if cfg.coeff_delta > 0:
            take("faithfulness", cfg.coeff_delta,
                 faithfulness_loss([c.delta for c in dec.components.values()]))
        if cfg.coeff_importance > 0:
            take("minimality", cfg.coeff_importance,
                 minimality_loss(upper, p, cfg.importance_eps, cfg.freq_beta, cfg.freq_ref_tokens,
                                 global_mean=self.shard.global_mean_value if self.shard.enabled else None))
        lead = next(iter(pre.values())).shape[:-1]
        if cfg.coeff_stochastic > 0:
            for _ in range(cfg.n_mask_samples):
                lower = lower_view()
                src = self._no_delta(sample_sources(lower, self.generator, self.shard))
                routing = self._routing(lead)
                masks, dmasks = masks_from_sources(lower, src, routing)
                out = dec.run_masked(batch, masks, dmasks)
                take("stochastic", cfg.coeff_stochastic / cfg.n_mask_samples,
                     recon_loss(target, out, self.recon_kind))
        if cfg.coeff_layerwise > 0:
            total = 0.0
            for site in dec.sites:
                lower = lower_view()
                src = self._no_delta(sample_sources({site: lower[site]}, self.generator, self.shard))
                masks, dmasks = masks_from_sources({site: lower[site]}, src)
                out = dec.run_masked(batch, masks, dmasks)
                loss = recon_loss(target, out, self.recon_kind)
                take("layerwise", cfg.coeff_layerwise / len(dec.sites), loss)
                total += loss.item()
            losses["layerwise"] = torch.tensor(total / len(dec.sites))
        if cfg.adversary != "none":
            take("adversarial", cfg.coeff_adversarial, self._adversarial(batch, target, lower_view(), lead))
        grads = [(ci.pre[k], pre[k].grad) for k in pre if pre[k].grad is not None]
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
        if self.adversary is not None:
            self.adversary.ascend()
        with torch.no_grad():
            losses["l0"] = sum((g > 0).float().sum(-1).mean() for g in pre.values())
        names = list(losses)
        values = torch.stack([losses[k].float().reshape(()) for k in names])
        self.shard.mean_([values])
        out = dict(zip(names, values.tolist()))
        out.update(lr=lr, p=p, step=self.step + 1)
        return out

    def _no_delta(self, sources: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """SPD has no Δ component: its source (the Δ mask) is 0."""
        if self.cfg.use_delta_component:
            return sources
        return {k: torch.cat([v[..., :-1], torch.zeros_like(v[..., -1:])], -1) for k, v in sources.items()}

    def _routing(self, lead):
        if self.cfg.routing == "layerwise":  # SPD's layerwise loss is separate; stochastic masks all
            return None
        return sample_routing(self.dec.sites, lead, self.cfg.routing, self.generator,
                              device=next(iter(self.dec.components.values())).U.device,
                              shard=self.shard)

    def _adversarial(self, batch, target, lower, lead) -> torch.Tensor:
        cfg, dec = self.cfg, self.dec
        routing = self._routing(lead)
        frozen_ci = {k: v.detach() for k, v in lower.items()}

        def adv_loss(sources, ci=frozen_ci):
            masks, dmasks = masks_from_sources(ci, self._no_delta(sources), routing)
            return recon_loss(target, dec.run_masked(batch, masks, dmasks), self.recon_kind)

        if cfg.adversary == "fresh":
            start = init_sources(frozen_ci, cfg.pgd_scope, cfg.pgd_init, self.generator, self.shard)
            sources = fresh_pgd(adv_loss, start, cfg.pgd_steps, cfg.pgd_step_size, self.shard,
                                shared=cfg.pgd_scope == "shared")
        else:
            self.adversary.warmup(adv_loss, frozen_ci, cfg.ppgd_inner_steps, self.generator)
            # The outer pass: its backward trains U, V, CI and leaves .grad on the sources for
            # one more ascent step after the optimiser step.
            sources = self.adversary.current(frozen_ci, self.generator)
        return adv_loss(sources, ci=lower)

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
        """Write ``run_dir/checkpoints/step_{k}/`` (decomposition + trainer state) atomically.

        Under data parallelism every rank calls it (``collective``); on an interrupt only rank 0
        does, and per-rank persistent sources are then not saved (a resume re-draws them).
        """
        if self.run_dir is None:
            raise ValueError("no run_dir to save checkpoints to")
        final = self.run_dir / CHECKPOINT_DIR / f"step_{self.step:07d}"
        tmp = final.with_name(final.name + ".tmp")
        if self.shard.is_main:
            self.dec.save(tmp)
            torch.save(self.state_dict(), tmp / TRAINER_STATE_FILE)
            self.cfg.to_file(self.run_dir / "config.yaml")
        if collective and self._per_rank_adversary():
            self.shard.barrier()
            torch.save(self.adversary.state_dict(), tmp / f"adversary_rank{self.shard.rank}.pt")
            self.shard.barrier()
        if self.shard.is_main:
            if final.exists():
                import shutil

                shutil.rmtree(final)
            tmp.rename(final)
        if collective:
            self.shard.barrier()
        return final

    def _per_rank_adversary(self) -> bool:
        """Per-token persistent sources differ by rank: each rank checkpoints its own shard."""
        return self.shard.enabled and self.adversary is not None and self.cfg.ppgd_scope == "per_token"

    def load_checkpoint(self, path: str | Path | None = None) -> None:
        """Restore the latest checkpoint of ``run_dir`` (or ``path``) into this trainer."""
        if path is None:
            if self.run_dir is None:
                raise ValueError("resume needs a run_dir")
            ckpts = sorted((self.run_dir / CHECKPOINT_DIR).glob("step_*[0-9]"))
            if not ckpts:
                raise FileNotFoundError(f"no checkpoint to resume from in {self.run_dir / CHECKPOINT_DIR}")
            path = ckpts[-1]
        path = Path(path)
        loaded = Decomposition.load(path, self.model)
        self.dec.load_state_dict(loaded.state_dict())
        state = torch.load(path / TRAINER_STATE_FILE, weights_only=True)
        self.step = state["step"]
        self.warmup_done = state["warmup_done"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.stream.load_state_dict(state["stream"])
        if self._per_rank_adversary():
            own = path / f"adversary_rank{self.shard.rank}.pt"
            if own.exists():
                self.adversary.load_state_dict(torch.load(own, weights_only=True))
        elif self.adversary is not None and state["adversary"] is not None:
            self.adversary.load_state_dict(state["adversary"])
        self.history = list(state["history"])


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="decompose", dynamic_ncols=True)
