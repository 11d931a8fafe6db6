"""The bridge backend: the engine's exactness checks on TransformerBridge models (TL 3.9 and 4.x).

Runs alone on TL 4 (``.ci/tl4.sh``), where HookedTransformer does not exist: nothing here may
import it.
"""

import functools
import math
from importlib.metadata import version

import pytest
import torch

import tl_vpd
from tl_vpd import Decomposition, VPDConfig
from tl_vpd.backends import HookSession
from tl_vpd.backends.bridge import BridgeBackend, _replace
from engine_checks import check_factorized_equals_materialized, random_masks
from bridge_zoo import D_HEAD, FAMILIES, GATED, N_HEADS, N_KV_HEADS, make_bridge, tokens

TL_MAJOR = int(version("transformer-lens").split(".")[0])
CASES = [(f, c) for f in FAMILIES for c in (False, True)]
IDS = [f + ("-compat" if c else "-raw") for f, c in CASES]


@functools.cache
def cached_bridge(family, compat):
    """Read-only tests share one model per case; each of them checks it is left unchanged."""
    return make_bridge(family, compat)


def hook_counts(model):
    """Torch hooks per module. The bridge keeps some of its own (added on its first forward), so
    compare counts after a forward instead of expecting none."""
    return {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()}


@pytest.mark.parametrize("family,compat", CASES, ids=IDS)
def test_sites_found(family, compat):
    model = cached_bridge(family, compat)
    dec = Decomposition.from_model(model, C=8)
    assert isinstance(dec.backend, BridgeBackend)
    mlp = (["mlp.W_gate"] if family in GATED else []) + ["mlp.W_in", "mlp.W_out"]
    per_block = ["attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O", *mlp]
    assert dec.sites == [f"blocks.{l}.{s}" for l in range(2) for s in per_block]
    kv = N_KV_HEADS.get(family, N_HEADS) * D_HEAD
    assert dec.components["blocks.0.attn.W_Q"].W.shape == (N_HEADS * D_HEAD, 32)
    assert dec.components["blocks.0.attn.W_K"].W.shape == (kv, 32)
    assert dec.components["blocks.0.attn.W_O"].W.shape == (32, N_HEADS * D_HEAD)
    assert dec.site("blocks.0.attn.W_K").n_heads == kv // D_HEAD


def test_gpt2_weights_are_the_split_and_transposed_conv1d():
    """GPT-2 (raw): W_Q/K/V are the column blocks of c_attn, W_in/W_out the transposed Conv1Ds."""
    model = cached_bridge("gpt2", False)
    dec = Decomposition.from_model(model, C=4)
    h0 = model.original_model.transformer.h[0]
    c_attn = h0.attn.c_attn.weight  # [d_model, 3 d_model]
    for i, kind in enumerate(("W_Q", "W_K", "W_V")):
        block = c_attn[:, 32 * i:32 * (i + 1)]
        assert torch.equal(dec.target_weight(f"blocks.0.attn.{kind}"), block.T)
    assert torch.equal(dec.target_weight("blocks.0.attn.W_O"), h0.attn.c_proj.weight.T)
    assert torch.equal(dec.target_weight("blocks.0.mlp.W_in"), h0.mlp.c_fc.weight.T)
    assert torch.equal(dec.target_weight("blocks.0.mlp.W_out"), h0.mlp.c_proj.weight.T)


@pytest.mark.parametrize("family,compat", CASES, ids=IDS)
def test_unmasked_equals_target(family, compat):
    model = cached_bridge(family, compat)
    toks = tokens()
    ref = model(toks)
    dec = Decomposition.from_model(model, C=16)
    ones = {n: torch.ones(*toks.shape, c.C) for n, c in dec.components.items()}
    dones = {n: torch.ones(*toks.shape) for n in dec.sites}
    for impl in ("factorized", "materialized"):
        assert (dec.run_masked(toks, ones, dones, impl=impl) - ref).abs().max() <= 1e-4, impl
    zeros = {n: torch.zeros_like(m) for n, m in ones.items()}
    dzeros = {n: torch.zeros_like(d) for n, d in dones.items()}
    assert (dec.run_masked(toks, zeros, dzeros) - ref).abs().max() > 1e-2  # not vacuous


@pytest.mark.parametrize("family,compat", CASES, ids=IDS)
def test_factorized_equals_materialized(family, compat):
    check_factorized_equals_materialized(cached_bridge(family, compat), tokens())


@pytest.mark.parametrize("family,compat", CASES, ids=IDS)
def test_masked_equals_real_weight_swap(family, compat):
    """Token-constant masks equal the model with W' written into the weights the sites report.

    Writing through ``target_weight``'s view only changes the forward if it *is* the weight the
    forward uses (TL 3.9's compatibility mode runs gated MLPs on private processed copies)."""
    model = make_bridge(family, compat)  # modified in place below, so not the shared one
    toks = tokens()
    dec = Decomposition.from_model(model, C=16)
    g = torch.Generator().manual_seed(3)
    m = {n: torch.rand(c.C, generator=g) for n, c in dec.components.items()}
    md = {n: torch.rand((), generator=g) for n in dec.sites}
    masked = dec.run_masked(toks, {n: v.expand(*toks.shape, -1) for n, v in m.items()},
                            {n: v.expand(*toks.shape) for n, v in md.items()})
    with torch.no_grad():
        for n, c in dec.components.items():
            dec.target_weight(n).copy_(c.U @ torch.diag(m[n]) @ c.V + md[n] * c.delta)
    assert (masked - model(toks)).abs().max() <= 1e-4


@pytest.mark.parametrize("family,compat", CASES, ids=IDS)
def test_gradients_and_model_untouched(family, compat):
    model = cached_bridge(family, compat)
    toks = tokens()
    before = model(toks)
    params_before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks_before = hook_counts(model)
    dec = Decomposition.from_model(model, C=8)
    masks, dmasks = random_masks(dec, toks)
    for t in (*masks.values(), *dmasks.values()):
        t.requires_grad_(True)
    logits = dec.run_masked(toks, masks, dmasks)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), toks[:, 1:].flatten())
    loss.backward()
    for n, c in dec.components.items():
        assert c.U.grad is not None and c.U.grad.abs().sum() > 0, n
        assert c.V.grad is not None and c.V.grad.abs().sum() > 0, n
        assert masks[n].grad.abs().sum() > 0 and dmasks[n].grad.abs().sum() > 0, n
    assert all(p.grad is None for p in model.parameters())
    assert hook_counts(model) == hooks_before
    assert torch.equal(model(toks), before)
    assert all(torch.equal(v, params_before[k]) for k, v in model.state_dict().items())


def test_refuses_attn_result_and_split_qkv():
    """Their hooks silently never fire, so the masks would be ignored: refuse, also when the flag
    is switched on after the decomposition was built."""
    model = make_bridge("gpt2")
    dec = Decomposition.from_model(model, C=4)
    toks = tokens()
    ones = {n: torch.ones(*toks.shape, 4) for n in dec.sites}
    for setter, flag in ((model.set_use_attn_result, "use_attn_result"),
                         (model.set_use_split_qkv_input, "use_split_qkv_input")):
        setter(True)
        with pytest.raises(ValueError, match=flag):
            Decomposition.from_model(model, C=4)
        with pytest.raises(ValueError, match=flag):
            dec.run_masked(toks, ones)
        setter(False)
    assert (dec.run_masked(toks, ones) - model(toks)).abs().max() <= 1e-4


def test_unverified_component_class_refused():
    """An MLP or attention bridge of another class may run its projections differently."""
    model = make_bridge("native_llama")
    mlp = model.blocks[1].mlp
    mlp.__class__ = type("CustomMLPBridge", (type(mlp),), {})
    with pytest.raises(ValueError, match="blocks.1.mlp is a CustomMLPBridge"):
        Decomposition.from_model(model, C=4)


def test_skipped_hook_detected():
    """A forward that never reaches some sites must fail, not silently ignore their masks."""
    model = cached_bridge("llama", False)
    dec = Decomposition.from_model(model, C=4)
    toks = tokens()
    before = model(toks)  # the bridge adds its own hooks lazily, on its first forward
    hooks_before = hook_counts(model)
    with pytest.raises(RuntimeError, match="exactly once"):
        with dec.masked({n: torch.ones(*toks.shape, 4) for n in dec.sites}):
            model(toks, stop_at_layer=1)
    assert hook_counts(model) == hooks_before
    assert torch.equal(model(toks), before)


def test_per_head_hook_out_is_flattened_and_restored():
    """A bridge that presents Q as ``[batch, pos, n_heads, d_head]`` at ``q.hook_out`` gets the
    core's ``[batch, pos, d_out]`` replacement back in its own shape."""
    dec = Decomposition.from_model(cached_bridge("llama", False), C=4)
    site = dec.site("blocks.0.attn.W_Q")
    seen = []

    def core(site, x, flat_out):  # stands in for the masked output: records the shape, adds 1
        seen.append(flat_out.shape)
        return flat_out + 1

    session = HookSession([site], core)
    session.capture(site.name, torch.randn(2, 5, site.d_in))
    out = torch.randn(2, 5, N_HEADS, D_HEAD)
    new = _replace(session, site)(None, (), out)
    assert seen == [(2, 5, site.d_out)]
    assert new.shape == out.shape and torch.equal(new, out + 1)


def test_decompose_and_save_load_round_trip(tmp_path):
    model = make_bridge("llama")  # GQA, gated
    data = torch.randint(0, 101, (32, 8), generator=torch.Generator().manual_seed(1))
    cfg = VPDConfig(C=8, steps=3, batch_size=4, seq_len=8, log_every=1, progress=False,
                    recon_loss="kl", pgd_steps=1, ppgd_inner_steps=1, faithfulness_warmup_steps=2,
                    ci_fn="shared_mlp", ci_hidden=8)
    dec = tl_vpd.decompose(model, cfg, data)
    steps = [m for m in dec.history if "adversarial" in m]
    assert len(steps) == 3 and all(math.isfinite(v) for m in steps for v in m.values())
    untrained = Decomposition.from_model(model, C=8, seed=cfg.seed)
    site = "blocks.0.attn.W_K"
    assert not torch.equal(dec.components[site].U, untrained.components[site].U)  # it trained
    toks = tokens()
    dec.save(tmp_path / "d")
    dec2 = tl_vpd.load(tmp_path / "d", model)
    ci1, ci2 = dec.causal_importance(toks), dec2.causal_importance(toks)
    assert all(torch.equal(ci1[n], ci2[n]) for n in dec.sites)
    masks, dmasks = random_masks(dec, toks)
    assert torch.equal(dec.run_masked(toks, masks, dmasks), dec2.run_masked(toks, masks, dmasks))
    other = make_bridge("llama", seed=1)
    with pytest.raises(ValueError, match="not the decomposition's target"):
        tl_vpd.load(tmp_path / "d", other)


@pytest.mark.skipif(TL_MAJOR < 4, reason="HookedTransformer exists before TransformerLens 4")
def test_hooked_backend_explains_tl4():
    from tl_vpd.backends.hooked import _hooked_transformer_class

    with pytest.raises(ImportError, match="bridge backend"):
        _hooked_transformer_class()
