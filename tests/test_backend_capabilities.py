"""What each backend declares it supports (capability flags), and that the analysis tools honour
the flags: a tool a backend does not support raises NotImplementedError naming the backend."""

import copy

import pytest
import torch

import tl_vpd
from tl_vpd import analysis as A
from tl_vpd.backends import BridgeBackend, HookedTransformerBackend, HookPointBackend
from tl_vpd.toy_models import TMS
from model_zoo import make_model, tokens as zoo_tokens

FLAGS = ("supports_edit", "supports_hooked_view", "supports_attribution")


def test_flags():
    for cls in (HookedTransformerBackend, BridgeBackend):  # tests/test_analysis_bridge.py
        assert all(getattr(cls, f) for f in FLAGS), cls.__name__
    assert not any(getattr(HookPointBackend, f) for f in FLAGS)


def test_unsupported_tools_raise_naming_the_backend():
    model, toks = TMS(5, 2, seed=0), torch.zeros(2, 5, dtype=torch.long)  # never run
    dec = tl_vpd.Decomposition.from_model(model, C=4)
    name = dec.backend.name
    site = dec.sites[0]
    with pytest.raises(NotImplementedError, match=name):
        A.edit(dec, {site: [0]})
    with pytest.raises(NotImplementedError, match=name):
        A.hooked(dec)
    with pytest.raises(NotImplementedError, match=name):
        A.attribution_graph(dec, toks[0], progress=False)
    for tool in (A.qk_data_interactions, A.ov_circuits):  # language models' attention only
        with pytest.raises(NotImplementedError, match=name):
            tool(dec, 0, toks) if tool is A.qk_data_interactions else tool(dec, 0)
    with pytest.raises(NotImplementedError, match=name):
        A.boundary_routing(dec, toks, {site: [0]}, [0])
    with pytest.raises(NotImplementedError, match=name):
        A.evaluate_edit(dec, {site: [0]}, toks)
    with pytest.raises(NotImplementedError, match=name):
        dec.backend.add_to_weight(model, dec.site(site), torch.zeros(dec.site(site).d_out,
                                                                     dec.site(site).d_in))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_add_to_weight_reads_back_through_the_sites(family):
    """Every kind of site (GQA keys/values, gated MLP, W_O) is written in the model's own layout."""
    model = make_model(family)
    backend = HookedTransformerBackend()
    sites = backend.find_sites(model)
    copied = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    deltas = {s.name: torch.randn(s.d_out, s.d_in, generator=g) for s in sites}
    for s in sites:
        backend.add_to_weight(copied, s, deltas[s.name])
    original = {s.name: s.weight for s in sites}
    for s in backend.find_sites(copied):
        assert torch.allclose(s.weight, original[s.name] + deltas[s.name], atol=1e-6), s.name
    assert not torch.equal(copied(zoo_tokens()), model(zoo_tokens()))
