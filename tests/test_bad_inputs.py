"""Bad inputs the library must refuse with a clear error: one table of (case, action, exception,
message pattern).

The load cases start from a fresh copy of one saved decomposition, spoil one thing (a tensor's
shape or values, a file's bytes, a key of decomposition.json, the model it is loaded onto) and
load it. Each must raise before anything is allocated: ``Decomposition.from_spec`` is replaced
by a trap while they run. Many of these used to load silently (a ``[d_out, 1]`` U broadcast to
zeros, an edited C or leaky_alpha used as is, a model differing only outside the decomposed
matrices accepted) or failed with raw ``SafetensorError`` / ``OSError`` / ``KeyError``.
"""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

import tl_vpd
from tl_vpd import Decomposition, DecompositionSpec, VPDConfig, io
from model_zoo import BASE, FAMILIES, make_model

SITES = "blocks.0.*"
U0 = "blocks.0.attn.W_Q.U"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = make_model("gpt2")
    cfg = VPDConfig(C=4, sites=(SITES,), seed=1, ci_fn="mlp", ci_hidden=8, steps=3)
    dec = Decomposition.from_spec(model, cfg.spec, config=cfg)
    path = tmp_path_factory.mktemp("saved") / "d"
    dec.save(path)
    return SimpleNamespace(model=model, dec=dec, path=path)


@pytest.fixture
def ctx(saved, tmp_path, monkeypatch):
    path = tmp_path / "d"
    shutil.copytree(saved.path, path)
    return SimpleNamespace(model=saved.model, dec=saved.dec, path=path, monkeypatch=monkeypatch)


# ------------------------------------------------------------------ spoilers
def _json(edit):
    def spoil(ctx):
        file = ctx.path / io.SPEC_FILE
        meta = json.loads(file.read_text())
        edit(meta)
        file.write_text(json.dumps(meta))
    return spoil


def _tensors(name, edit):
    def spoil(ctx):
        file = ctx.path / name
        tensors = load_file(str(file))
        edit(tensors)
        save_file(tensors, str(file))
    return spoil


def _bytes(name, edit):
    def spoil(ctx):
        file = ctx.path / name
        file.write_bytes(edit(file.read_bytes()))
    return spoil


def _set(d, key, value):
    d[key] = value


def _set_both(key, value):
    """Change a spec field and the config's copy of it, so only the files can tell."""
    def edit(meta):
        meta["spec"][key] = value
        meta["config"][key] = value
    return edit


def _nan(t, key):
    t[key] = t[key].clone()
    t[key].view(-1)[3] = float("nan")


def _other_model(edit=None, **cfg):
    def make(ctx):
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        if cfg:
            model = HookedTransformer(HookedTransformerConfig(**{**BASE, **FAMILIES["gpt2"], **cfg}))
            own = ctx.model.state_dict()
            model.load_state_dict({k: own.get(k, v) for k, v in model.state_dict().items()})
        else:
            model = make_model("gpt2")
        if edit is not None:
            with torch.no_grad():
                edit(model)
        return model
    return make


def _bump(param):
    def edit(model):
        dict(model.named_parameters())[param].add_(0.1)
    return edit


def load_case(case_id, spoil, exc, match, model=None):
    """A load of the saved decomposition after ``spoil(ctx)``, onto ``model(ctx)`` (default: its
    target)."""
    def action(ctx):
        if spoil is not None:
            spoil(ctx)
        target = ctx.model if model is None else model(ctx)

        def trap(*args, **kwargs):
            raise AssertionError("the decomposition was allocated before the files were checked")
        ctx.monkeypatch.setattr(Decomposition, "from_spec", trap)
        tl_vpd.load(ctx.path, target)
    return pytest.param(action, exc, match, id=case_id)


def call_case(case_id, fn, exc, match):
    return pytest.param(lambda ctx: fn(ctx), exc, match, id=case_id)


def _save_mismatched(ctx):
    dec = Decomposition.from_model(ctx.model, C=4, sites=SITES)
    dec.config = VPDConfig(C=8)  # another run's config: the saved files would not load
    dec.save(ctx.path.parent / "mismatched")


COMP, CI, META = io.COMPONENTS_FILE, io.CI_FILE, io.SPEC_FILE

CASES = [
    # --- components.safetensors: shapes, keys, dtypes, values, bytes
    load_case("U-wrong-shape", _tensors(COMP, lambda t: _set(t, U0, t[U0][:, :1].contiguous())),
              ValueError, rf"{COMP}: tensor {U0} has shape \[32, 1\], expected \[32, 4\]"),
    load_case("U-missing", _tensors(COMP, lambda t: t.pop(U0)), ValueError,
              rf"{COMP} does not hold .* missing \[{U0}\]"),
    load_case("unexpected-tensor", _tensors(COMP, lambda t: _set(t, "extra.U", torch.ones(2))),
              ValueError, rf"{COMP} does not hold .*unexpected \[extra\.U\]"),
    load_case("U-integer-dtype", _tensors(COMP, lambda t: _set(t, U0, t[U0].to(torch.int32))),
              ValueError, rf"{COMP}: tensor {U0} is stored as I32, not a floating dtype"),
    load_case("U-nan", _tensors(COMP, lambda t: _nan(t, U0)), ValueError,
              rf"{COMP}: tensor {U0} holds 1 NaN or infinite"),
    load_case("components-truncated", _bytes(COMP, lambda b: b[: len(b) // 2]), ValueError,
              rf"{COMP} is truncated or corrupt"),
    load_case("components-empty", _bytes(COMP, lambda b: b""), ValueError,
              rf"{COMP} is truncated or corrupt"),
    load_case("components-header-garbled", _bytes(COMP, lambda b: b[:8] + b"#" * 16 + b[24:]),
              ValueError, rf"{COMP} is truncated or corrupt"),
    load_case("components-missing", lambda ctx: (ctx.path / COMP).unlink(), FileNotFoundError,
              rf"{COMP} is missing"),
    load_case("components-a-directory",
              lambda ctx: ((ctx.path / COMP).unlink(), (ctx.path / COMP).mkdir()),
              FileNotFoundError, rf"{COMP} is missing \(or not a file\)"),
    # --- ci_fn.safetensors
    load_case("ci-truncated", _bytes(CI, lambda b: b[:-7]), ValueError,
              rf"{CI} is truncated or corrupt"),
    load_case("ci-inf", _tensors(CI, lambda t: _set(t, "w1.0", torch.full_like(t["w1.0"], float("inf")))),
              ValueError, rf"{CI}: tensor w1\.0 holds 32 NaN or infinite"),
    load_case("ci-wrong-shape", _tensors(CI, lambda t: _set(t, "b2.0", torch.zeros(5))),
              ValueError, rf"{CI}: tensor b2\.0 has shape \[5\], expected \[4\]"),
    # --- decomposition.json: JSON, version, required keys
    load_case("json-garbage", _bytes(META, lambda b: b"\x00not json"), ValueError,
              rf"{META} is not valid JSON"),
    load_case("json-truncated", _bytes(META, lambda b: b[: len(b) // 3]), ValueError,
              rf"{META} is not valid JSON"),
    load_case("json-a-list", _bytes(META, lambda b: b"[1, 2]"), ValueError,
              rf"{META} holds a JSON list"),
    load_case("format-version-missing", _json(lambda m: m.pop("format_version")), ValueError,
              rf"{META} has no 'format_version'"),
    load_case("format-version-unknown", _json(lambda m: _set(m, "format_version", 7)), ValueError,
              r"format version 7 is not supported"),
    load_case("fingerprint-deleted", _json(lambda m: m.pop("fingerprint")), ValueError,
              rf"{META} lacks the key\(s\) \['fingerprint'\]"),
    load_case("model-fingerprint-deleted", _json(lambda m: m.pop("model_fingerprint")), ValueError,
              rf"{META} lacks the key\(s\) \['model_fingerprint'\]"),
    load_case("spec-key-deleted", _json(lambda m: m["spec"].pop("leaky_alpha")), ValueError,
              r"'spec' is not valid: missing field\(s\) \['leaky_alpha'\]"),
    load_case("spec-leaky-alpha-a-string", _json(_set_both("leaky_alpha", "0.5")), ValueError,
              r"leaky_alpha must be a number in \[0, 1\]"),
    load_case("spec-ci-fn-unknown", _json(lambda m: _set(m["spec"], "ci_fn", "lstm")), ValueError,
              r"ci_fn must be one of"),
    # --- decomposition.json: edits that the other keys or the tensors contradict
    load_case("C-edited", _json(lambda m: _set(m["spec"], "C", 5)), ValueError,
              r"C gives site blocks\.0\.attn\.W_Q C=5, but site_shapes says C=4"),
    load_case("C-huge-consistently",  # spec, site_shapes and config all say C=1e9: no 128 GB
              _json(lambda m: (_set_both("C", 10**9)(m),
                               [v.__setitem__(2, 10**9) for v in m["site_shapes"].values()])),
              ValueError, rf"{COMP}: tensor {U0} has shape \[32, 4\], expected \[32, 1000000000\]"),
    load_case("ci-hidden-huge", _json(_set_both("ci_hidden", 10**9)), ValueError,
              rf"{CI}: tensor w1\.0 has shape \[4, 8\], expected \[4, 1000000000\]"),
    load_case("leaky-alpha-edited", _json(lambda m: _set(m["spec"], "leaky_alpha", 0.3)),
              ValueError, r"config and spec disagree on leaky_alpha \(config 0\.01, spec 0\.3\)"),
    load_case("config-ci-fn-edited", _json(lambda m: _set(m["config"], "ci_fn", "shared_mlp")),
              ValueError, r"config and spec disagree on ci_fn"),
    load_case("config-sites-edited", _json(lambda m: _set(m["config"], "sites", ["blocks.1.*"])),
              ValueError, r"config and spec disagree on sites"),
    load_case("config-invalid", _json(lambda m: _set(m["config"], "steps", -1)), ValueError,
              r"'config' is not a valid VPDConfig"),
    load_case("site-shapes-site-deleted", _json(lambda m: m["site_shapes"].pop("blocks.0.mlp.W_in")),
              ValueError, r"'site_shapes' does not match the spec's sites \(missing \['blocks\.0\.mlp\.W_in'\]"),
    load_case("sites-reordered", _json(lambda m: m["spec"]["sites"].reverse()), ValueError,
              r"not in the model's forward order"),
    load_case("fingerprint-edited", _json(lambda m: m["fingerprint"]["blocks.0.mlp.W_out"].__setitem__(2, 1.0)),
              ValueError, r"not the decomposition's target: the weights of site blocks\.0\.mlp\.W_out"),
    # --- the model it is loaded onto
    load_case("model-differs-in-embedding", None, ValueError,
              r"not the decomposition's target: 1 of its parameters differ .*\[embed\.W_E\]",
              model=_other_model(_bump("embed.W_E"))),
    load_case("model-differs-in-unembed-and-norm", None, ValueError,
              r"2 of its parameters differ .*\[ln_final\.w, unembed\.W_U\]",
              model=_other_model(lambda m: (_bump("unembed.W_U")(m), _bump("ln_final.w")(m)))),
    load_case("model-differs-in-an-undecomposed-bias", None, ValueError,
              r"parameters differ .*blocks\.1\.attn\.b_O",
              model=_other_model(_bump("blocks.1.attn.b_O"))),
    load_case("model-shares-only-layer-0", None, ValueError,  # a 3-layer model with the same layer 0
              r"parameters differ .*blocks\.2\.", model=_other_model(n_layers=3)),
    load_case("model-without-the-sites", None, ValueError,
              r"not the decomposition's target: it has no site\(s\) \[blocks\.0\.mlp\.W_in",
              model=_other_model(attn_only=True)),
    load_case("load-onto-another-type", None, TypeError, r"no backend for a torch.nn.modules.linear.Linear",
              model=lambda ctx: torch.nn.Linear(3, 3)),
    # --- construction and saving
    call_case("site-name-unknown", lambda ctx: Decomposition.from_model(ctx.model, C=4, sites=["blocks.0.attn.W_X"]),
              ValueError, r"matches no site"),
    call_case("C-zero", lambda ctx: Decomposition.from_model(ctx.model, C=0), ValueError,
              r"C must be >= 1 \(got 0\)"),
    call_case("C-negative-per-site", lambda ctx: Decomposition.from_model(ctx.model, C={"*": -2}),
              ValueError, r"C\['\*'\] must be >= 1 \(got -2\)"),
    call_case("C-fractional-per-site",  # from_spec: from_model's annotation is type-checked in tests
              lambda ctx: Decomposition.from_spec(ctx.model, DecompositionSpec(C={"*": 2.5})),
              TypeError, r"C\['\*'\] must be an int >= 1 \(got 2\.5\)"),
    call_case("C-a-bool", lambda ctx: Decomposition.from_model(ctx.model, C=True), TypeError,
              r"C must be an int >= 1"),
    call_case("dtype-unknown", lambda ctx: Decomposition.from_model(ctx.model, C=4, dtype="float16"),
              ValueError, r"dtype must be one of"),
    call_case("model-of-another-type", lambda ctx: Decomposition.from_model(torch.nn.Linear(3, 3), C=4),
              TypeError, r"no backend"),
    call_case("save-with-a-config-of-another-run", _save_mismatched, ValueError,
              r"cannot save to .*: dec\.config disagrees with dec\.spec on C \(config 8, spec 4\)"),
]


@pytest.mark.parametrize("action,exc,match", CASES)
def test_bad_input_is_refused(ctx, action, exc, match):
    with pytest.raises(exc, match=match):
        action(ctx)


def test_the_untouched_copy_loads(ctx):
    """The table's starting point is a good file: every refusal above is the spoiled part's."""
    dec = tl_vpd.load(ctx.path, ctx.model)
    assert dec.sites == ctx.dec.sites and dec.config == ctx.dec.config
