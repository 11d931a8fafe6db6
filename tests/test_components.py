"""SiteComponents: shape contracts of the factorized masked output."""

import pytest
import torch

from tl_vpd import Decomposition
from model_zoo import make_model


def test_shape_contracts_enforced():
    """jaxtyping + beartype are on in the test suite: a wrong shape fails loudly."""
    dec = Decomposition.from_model(make_model("gpt2"), C=4)
    comp = dec.components["blocks.0.attn.W_Q"]
    comp.inner_acts(torch.zeros(2, 3, 32))
    with pytest.raises(Exception, match="(?i)type-check|shape|dimension|violates"):
        comp.inner_acts(torch.zeros(2, 3, 31))
    with pytest.raises(Exception, match="(?i)type-check|shape|dimension|violates"):
        comp.masked_output(torch.zeros(2, 32), torch.zeros(2, 32), torch.zeros(2, 5), None)
