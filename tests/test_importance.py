"""Causal-importance functions and the leaky hard sigmoids."""

import pytest
import torch

from tl_vpd import Decomposition
from tl_vpd.importance import lower_leaky_sigmoid, upper_leaky_sigmoid
from model_zoo import make_model, tokens


def test_leaky_sigmoids():
    z = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    lo = lower_leaky_sigmoid(z, 0.01)
    assert torch.equal(lo, torch.tensor([0.0, 0.5, 1.0]))
    lo.backward(torch.tensor([-1.0, -1.0, -1.0]))  # descent would raise z: leak below 0
    assert torch.allclose(z.grad, torch.tensor([-0.01, -1.0, 0.0]))
    z.grad = None
    lower_leaky_sigmoid(z, 0.01).backward(torch.tensor([1.0, 1.0, 1.0]))  # would lower z: blocked
    assert torch.allclose(z.grad, torch.tensor([0.0, 1.0, 0.0]))
    up = upper_leaky_sigmoid(z.detach(), 0.01)
    assert torch.allclose(up, torch.tensor([0.0, 0.5, 1.01]))

@pytest.mark.parametrize("ci_fn", ["mlp", "vector_mlp", "shared_mlp", "global_mlp", "global_transformer"])
def test_ci_functions_shapes_and_range(ci_fn):
    model = make_model("gpt2")
    toks = tokens()
    dec = Decomposition.from_model(model, C=6, ci_fn=ci_fn, ci_hidden=8, ci_d_model=16, ci_n_heads=2, ci_n_layers=1)
    ci = dec.causal_importance(toks)
    assert set(ci) == set(dec.sites)
    for g in ci.values():
        assert g.shape == (*toks.shape, 6) and g.min() >= 0 and g.max() <= 1

def test_global_transformer_is_bidirectional():
    """The paper's CI network sees the whole sequence: changing a late token moves early CI."""
    model = make_model("gpt2")
    dec = Decomposition.from_model(model, C=6, ci_fn="global_transformer", ci_d_model=16, ci_n_heads=2, ci_n_layers=1)
    toks = tokens()
    toks2 = toks.clone()
    toks2[:, -1] = (toks2[:, -1] + 1) % 50
    _, x1 = dec.run_target(toks)
    _, x2 = dec.run_target(toks2)
    pre1, pre2 = dec.ci(x1).pre, dec.ci(x2).pre
    assert (pre1["blocks.0.attn.W_Q"][:, 0] - pre2["blocks.0.attn.W_Q"][:, 0]).abs().max() > 0
