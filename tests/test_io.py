"""tl_vpd.io (the saved format) and Decomposition.save / tl_vpd.load on top of it."""

import json

import pytest
import torch

import tl_vpd
from tl_vpd import Decomposition, identity, io
from model_zoo import make_model, tokens


@pytest.fixture(scope="module")
def model():
    return make_model("llama")


@pytest.fixture(scope="module")
def dec(model):
    d = Decomposition.from_model(model, C=5, sites="blocks.0.*", seed=3, ci_fn="mlp")
    with torch.no_grad():  # not the initial values, so loading must really copy them
        for c in d.components.values():
            c.U.mul_(1.5)
        for p in d.ci_fn.parameters():
            p.add_(0.1)
    d.config = tl_vpd.VPDConfig(C=5, sites=("blocks.0.*",), seed=3, ci_fn="mlp", steps=3)
    return d


def test_round_trip(dec, model, tmp_path):
    dec.save(tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(
        [io.SPEC_FILE, io.COMPONENTS_FILE, io.CI_FILE])
    again = tl_vpd.load(tmp_path / "d", model)
    assert again.sites == dec.sites and again.spec == dec.spec
    assert again.config == dec.config
    for name, c in dec.components.items():
        assert torch.equal(again.components[name].U, c.U)
        assert torch.equal(again.components[name].V, c.V)
    x = tokens(2, 8, seed=4)
    for name, g in dec.causal_importance(x).items():
        assert torch.equal(again.causal_importance(x)[name], g)
    assert Decomposition.load(tmp_path / "d", model).sites == dec.sites


def test_metadata_layout(dec, tmp_path):
    dec.save(tmp_path / "d")
    meta = io.read_metadata(tmp_path / "d")
    assert meta["format_version"] == io.FORMAT_VERSION
    assert meta["tl_vpd_version"] == tl_vpd.__version__
    assert meta["backend"] == dec.backend.name
    assert meta["site_shapes"] == {n: [c.d_out, c.d_in, c.C] for n, c in dec.components.items()}
    assert set(meta["fingerprint"]) == set(dec.sites)
    assert meta["model_fingerprint"] == identity.model_fingerprint(dec.model)
    assert io.FORMAT_VERSION == 2 and meta["config"] == dec.config.to_dict()
    assert json.loads((tmp_path / "d" / io.SPEC_FILE).read_text()) == meta


def test_a_different_model_is_refused(dec, tmp_path):
    dec.save(tmp_path / "d")
    other = make_model("llama")
    with torch.no_grad():
        other.blocks[0].attn.W_Q[0, 0, 0] += 0.5
    with pytest.raises(ValueError, match="not the decomposition's target"):
        tl_vpd.load(tmp_path / "d", other)


def test_not_a_saved_decomposition(tmp_path, model):
    with pytest.raises(FileNotFoundError, match="is it a saved decomposition"):
        tl_vpd.load(tmp_path, model)
    (tmp_path / io.SPEC_FILE).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        io.read_metadata(tmp_path)


def test_fingerprint_and_its_check():
    W = torch.arange(6.0).view(2, 3)
    fp = io.fingerprint({"w": W})
    assert fp["w"][:4] == [2.0, 3.0, 15.0, 15.0]
    io.check_fingerprint(fp, io.fingerprint({"w": W + 1e-9}))  # rounding passes
    for changed in (W.flip(1), W.view(3, 2), W * 1.01):
        with pytest.raises(ValueError, match="weights of site w differ"):
            io.check_fingerprint(fp, io.fingerprint({"w": changed}))


def test_format_functions_round_trip(tmp_path):
    U, V = torch.randn(3, 2), torch.randn(2, 4)
    state = {"layer.weight": torch.randn(5)}
    io.write_decomposition(tmp_path, {"spec": {"C": 2}}, {"s": (U, V)}, state)
    assert io.read_metadata(tmp_path)["spec"] == {"C": 2}
    (U2, V2), = io.read_components(tmp_path, ["s"]).values()
    assert torch.equal(U2, U) and torch.equal(V2, V)
    assert torch.equal(io.read_ci_state(tmp_path)["layer.weight"], state["layer.weight"])


def _as_version_1(path, drop_config=False):
    """Rewrite a saved decomposition's metadata as format version 1 wrote it (no whole-model
    fingerprint; the oldest files also had no config)."""
    file = path / io.SPEC_FILE
    meta = json.loads(file.read_text())
    meta["format_version"] = 1
    del meta["model_fingerprint"]
    if drop_config:
        del meta["config"]
    file.write_text(json.dumps(meta))


@pytest.mark.parametrize("drop_config", [False, True])
def test_version_1_files_still_load(dec, model, tmp_path, drop_config):
    dec.save(tmp_path / "d")
    _as_version_1(tmp_path / "d", drop_config)
    again = tl_vpd.load(tmp_path / "d", model)
    assert again.config == (None if drop_config else dec.config)
    for name, c in dec.components.items():
        assert torch.equal(again.components[name].U, c.U)
    # Version 1 has per-site fingerprints: those are still checked ...
    other = make_model("llama")
    with torch.no_grad():
        other.blocks[0].mlp.W_out.mul_(1.01)
    with pytest.raises(ValueError, match="weights of site blocks.0.mlp.W_out differ"):
        tl_vpd.load(tmp_path / "d", other)
    # ... but it cannot tell a model that differs elsewhere: version 2 can.
    elsewhere = make_model("llama")
    with torch.no_grad():
        elsewhere.embed.W_E.add_(0.1)
    assert tl_vpd.load(tmp_path / "d", elsewhere).sites == dec.sites
    dec.save(tmp_path / "v2")
    with pytest.raises(ValueError, match=r"parameters differ .*embed\.W_E"):
        tl_vpd.load(tmp_path / "v2", elsewhere)


def test_refusals_name_the_file_and_leave_the_files_untouched(dec, model, tmp_path):
    """A refused load raises before anything is built and leaves the files as they were."""
    dec.save(tmp_path / "d")
    file = tmp_path / "d" / io.COMPONENTS_FILE
    data = file.read_bytes()
    file.write_bytes(data[:100])
    with pytest.raises(ValueError, match=rf"{file}.* is truncated or corrupt") as err:
        tl_vpd.load(tmp_path / "d", model)
    assert "Errno" not in str(err.value) and "SafetensorError" not in type(err.value).__name__
    assert file.read_bytes() == data[:100]


def test_header_and_tensor_readers(tmp_path):
    U = torch.randn(3, 2, dtype=torch.float64)
    io.write_decomposition(tmp_path, {"spec": {"C": 2}}, {"s": (U, U.T)}, {})
    header = io.read_header(tmp_path / io.COMPONENTS_FILE)
    assert header == {"s.U": ("F64", (3, 2)), "s.V": ("F64", (2, 3))}
    with pytest.raises(ValueError, match=r"lacks the tensor\(s\) \['t.U', 't.V'\]"):
        io.read_components(tmp_path, ["t"])
    with pytest.raises(FileNotFoundError, match="nothing.safetensors is missing"):
        io.read_tensors(tmp_path / "nothing.safetensors")
