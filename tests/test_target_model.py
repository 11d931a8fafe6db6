"""tl_vpd.target_model: the target on either TransformerLens (HookedTransformer on 3.x, a native
TransformerBridge on 4.x) and weights moving between the two layouts. Runs on TL 3.9 and 4.x."""

import pytest
import torch
from safetensors.torch import save_file

import tl_vpd
from tl_vpd.data import default_corpus
from tl_vpd.target import load_target, target_config, train_target
from tl_vpd.target_model import HAS_HOOKED_TRANSFORMER, build_model, hooked_to_native, native_to_hooked

VOCAB = 320
RUN_KW = dict(steps=20, batch_size=8, lr=1e-2, warmup_steps=4, eval_every=10, eval_batches=2,
              progress=False)


@pytest.fixture(scope="module")
def corpus():
    return default_corpus(seq_len=32, vocab_size=VOCAB, max_bytes=300_000)


@pytest.fixture(scope="module")
def cfg():
    return target_config(VOCAB, d_model=32, n_layers=2, n_heads=4, n_ctx=32)


def test_train_save_load_decompose(corpus, cfg, tmp_path):
    """The main job's target path on the installed TransformerLens."""
    run = train_target(cfg, corpus.train, corpus.val, run_dir=tmp_path, **RUN_KW)
    assert run.curve[-1]["val_ce"] < run.curve[0]["val_ce"] - 0.5
    model, _, curve = load_target(tmp_path)
    assert type(model) is type(run.model) and curve == run.curve
    toks = corpus.val[:2]
    with torch.no_grad():
        assert torch.equal(model(toks), run.model(toks))
    dec = tl_vpd.Decomposition.from_model(model, C=8)
    assert len(dec.sites) == 2 * 6  # Q K V O, MLP in and out
    again = train_target(cfg, corpus.train, corpus.val, **{**RUN_KW, "steps": 3, "eval_every": 3})
    first = train_target(cfg, corpus.train, corpus.val, **{**RUN_KW, "steps": 3, "eval_every": 3})
    assert again.curve == first.curve  # deterministic for a seed


def test_layouts_round_trip(cfg):
    """HookedTransformer layout -> native -> back is the identity on every saved weight."""
    model = build_model(cfg)
    sd = model.state_dict()
    if HAS_HOOKED_TRANSFORMER:
        back = native_to_hooked(hooked_to_native(sd, model.cfg), model.cfg)
        assert all(torch.equal(back[k], sd[k]) for k in back) and set(back) <= set(sd)
    else:
        back = hooked_to_native(native_to_hooked(sd, model.cfg), model.cfg)
        assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_target_from_the_other_layout_loads_and_agrees(corpus, cfg, tmp_path):
    """A target saved by the other TransformerLens loads into this one's model and computes the
    same logits (fp32 kernels differ: ≤ 1e-5 here, |logits| ≈ 6)."""
    run = train_target(cfg, corpus.train, corpus.val, run_dir=tmp_path / "a", **RUN_KW)
    sd = run.model.state_dict()
    other = native_to_hooked(sd, run.model.cfg) if not HAS_HOOKED_TRANSFORMER else \
        hooked_to_native(sd, run.model.cfg)
    (tmp_path / "b").mkdir()
    for name in ("config.json", "curve.json"):
        (tmp_path / "b" / name).write_bytes((tmp_path / "a" / name).read_bytes())
    save_file({k: v.contiguous() for k, v in other.items()}, str(tmp_path / "b" / "model.safetensors"))
    model, _, _ = load_target(tmp_path / "b")
    toks = corpus.val[:4]
    with torch.no_grad():
        ref = run.model(toks)
        assert (model(toks) - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))


@pytest.mark.skipif(not HAS_HOOKED_TRANSFORMER, reason="needs both model classes (TL < 4)")
def test_bridge_twin_of_the_target_is_the_same_function(cfg):
    from bridge_zoo import native_twin

    model = build_model(cfg).eval()
    twin = native_twin(model)
    toks = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(toks)
        assert (twin(toks) - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))


@pytest.mark.skipif(not HAS_HOOKED_TRANSFORMER, reason="needs both model classes (TL < 4)")
def test_decomposition_of_one_class_is_refused_on_the_other(cfg, tmp_path):
    """A decomposition saved on the HookedTransformer target does not load onto its bridge twin
    (the same function, weights moved by load_weights): the error names both backends and what
    to do, before any fingerprint comparison could call the weights different."""
    from bridge_zoo import native_twin

    model = build_model(cfg).eval()
    twin = native_twin(model)
    path = tl_vpd.Decomposition.from_model(model, C=4).save(tmp_path / "dec")
    with pytest.raises(ValueError, match="saved on a model of the 'hooked_transformer' backend.*"
                                         "'transformer_bridge' model.*load_weights"):
        tl_vpd.load(path, twin)
    assert tl_vpd.load(path, model).sites  # the saved class still loads it
