"""tl_vpd.analysis.ov: a planted copying head's value subcomponent reads and promotes its token,
and what the analysis says it writes is what the model's forward pass adds to the logits."""

import pytest
import torch

from tl_vpd import analysis as A
from planted import VOCAB, planted_decomposition, planted_model

VS, OS = "blocks.1.attn.W_V", "blocks.1.attn.W_O"
CAT, DOT = VOCAB.index("cat"), VOCAB.index(".")


def decode(ids):
    return VOCAB[ids[0]]


@pytest.fixture(scope="module")
def copying():
    """The planted model with layer 1's OV circuit replaced by two rank-1 pieces: head 2 copies
    "cat" (reads its embedding, writes its unembedding) and head 0 writes "." on every word."""
    model = planted_model()
    a1 = model.blocks[1].attn
    E, W_U = model.W_E.detach(), model.W_U.detach()
    e1 = torch.zeros(16)
    e1[1] = 1.0  # the word feature
    pieces = [(2, 5, E[CAT] / E[CAT].norm() ** 2, W_U[:, CAT]), (0, 6, e1, W_U[:, DOT])]
    with torch.no_grad():
        a1.W_V.zero_()
        a1.W_O.zero_()
        for h, d, read, write in pieces:
            a1.W_V[h, :, d] = read
            a1.W_O[h, d, :] = write
    dec = planted_decomposition(model)
    with torch.no_grad():
        for site in (VS, OS):
            comp = dec.components[site]
            U, V = torch.zeros_like(comp.U), torch.zeros_like(comp.V)
            for c, (h, d, read, write) in enumerate(pieces):
                if site == VS:
                    U[h * 8 + d, c], V[c] = 1.0, read
                else:
                    U[:, c], V[c, h * 8 + d] = write, 1.0
            comp.U.copy_(U)
            comp.V.copy_(V)
    for site in (VS, OS):
        assert dec.components[site].delta.abs().max() < 1e-6
    return model, dec


def test_copying_value_subcomponent_promotes_its_token(copying):
    model, dec = copying
    ov = A.ov_circuits(dec, 1, decode=decode)
    assert ov.exact and ov.write.shape == (4, 4, 16) and ov.pair.shape == (4, 4, 4)
    assert ov.reads(0, 1)[0][0] == "cat" and ov.promotes(0, 1)[0][0] == "cat"
    assert ov.promotes(1, 1)[0][0] == "." and ov.suppresses(0, 1)[0][0] != "cat"
    assert torch.allclose(ov.head_share(0), torch.tensor([0.0, 0.0, 1.0, 0.0]))
    assert torch.allclose(ov.head_share(1), torch.tensor([1.0, 0.0, 0.0, 0.0]))
    # value 0 composes with output 0 in head 2 only, with gain ‖V_V‖ · 1 · ‖U_O‖
    gain = float(model.W_U[:, CAT].norm() / model.W_E[CAT].norm())
    assert ov.top_outputs(0, 1)[0][:2] == (0, 2)
    assert ov.pair[0, 0, 2] == pytest.approx(gain, rel=1e-5)
    assert ov.pair[0, 1].abs().max() == 0 and ov.pair[0, 0, [0, 1, 3]].abs().max() == 0
    assert ov.write[2:].abs().max() == 0  # the unused subcomponents write nothing
    assert ov.ranked()[:2] == sorted([0, 1], key=lambda c: -float(ov.write[c].norm(dim=-1).sum()))
    text = repr(ov)
    assert text.startswith("OVCircuits(layer 1, W_V C=4 × W_O C=4, 4 heads") and "'cat'" in text
    assert "<table>" in ov._repr_html_()


@pytest.mark.parametrize("c", [0, 1])
def test_logit_effect_is_what_the_forward_adds(copying, c):
    """Turning value subcomponent c on alone (Δ off) adds Σ_h (Σ_t' A^h[t, t'] a_c(t')) ·
    write[c, h] / (s_c ‖V_c‖) · W_U to the logits: the last layer, attention only, no norm."""
    model, dec = copying
    toks = torch.randint(0, len(VOCAB), (4, 16), generator=torch.Generator().manual_seed(1))
    ov = A.ov_circuits(dec, 1, data=toks, decode=decode)
    assert ov.sign[c] == 1  # both pieces read a positive activation where they fire
    on, off = torch.zeros(*toks.shape, 4), torch.zeros(*toks.shape, 4)
    on[..., c] = 1.0
    zero = {VS: torch.zeros(toks.shape)}
    with torch.no_grad():
        delta = dec.run_masked(toks, {VS: on}, zero) - dec.run_masked(toks, {VS: off}, zero)
    _, xs = dec.run_target(toks)
    v = dec.components[VS].V[c]
    act = xs[VS] @ v  # [b, T]
    _, cache = model.run_with_cache(toks, names_filter="blocks.1.attn.hook_pattern")
    attended = torch.einsum("bhqk,bk->bqh", cache["blocks.1.attn.hook_pattern"], act)
    pred = sum(attended[..., h, None] * ov.logit_effect(c, head=h) for h in range(4)) / v.norm()
    assert (delta - pred).abs().max() < 1e-4 * max(1.0, float(delta.abs().max()))
    assert delta.abs().max() > 0.1


def test_requires_the_value_site(copying):
    _, dec = copying
    with pytest.raises(KeyError, match="not a decomposed site"):
        A.ov_circuits(dec, 5)
