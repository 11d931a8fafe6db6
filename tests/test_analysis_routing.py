"""tl_vpd.analysis.routing: attention on boundary tokens against the patterns themselves."""

import pytest
import torch

from tl_vpd import analysis as A
from planted import BOUNDARY, KS, VOCAB, planted, toks  # noqa: F401  (fixtures)


def decode(ids):
    return VOCAB[ids[0]]


def _direct_mass(model, toks):
    """Mean over prompts and queries of Σ_{k ≤ q, token k a boundary} pattern[q, k], by loops."""
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
    out = torch.zeros(2, 4)
    B, T = toks.shape
    for L in range(2):
        p = cache[f"blocks.{L}.attn.hook_pattern"]
        for h in range(4):
            total = 0.0
            for b in range(B):
                for q in range(T):
                    total += sum(float(p[b, h, q, k]) for k in range(q + 1) if toks[b, k] >= 24)
            out[L, h] = total / (B * T)
    return out


def test_boundary_routing_matches_the_patterns(planted, toks):
    model, dec = planted
    r = A.boundary_routing(dec, toks, f"{KS}:1", decode=decode)
    assert torch.allclose(r.base, _direct_mass(model, toks), atol=1e-5)
    assert torch.allclose(r.after, _direct_mass(A.edit(dec, {KS: [1]}), toks), atol=1e-5)
    # head 1 routes word queries to boundary keys through W_K:1; nothing else changes
    assert r.delta[1, 1] < -0.3 and r.base[1, 1] > 2 * r.chance
    others = torch.ones(2, 4, dtype=torch.bool)
    others[1, 1] = False
    assert r.delta[others].abs().max() < 1e-5
    uniform = torch.stack([(toks[:, :t + 1] >= 24).float().mean(-1) for t in range(16)], -1).mean()
    assert r.chance == pytest.approx(float(uniform), abs=1e-6)
    assert r.rows()[0]["head"] == "L1H1" and "L1H1" in r.table().splitlines()[2]
    assert "ablating blocks.1.attn.W_K:1" in repr(r) and "<table>" in r._repr_html_()
    # the previous-token key piece does not route to boundaries: ablating it moves heads 0, 2, 3
    # to uniform attention, which is the chance level
    prev = A.boundary_routing(dec, toks, f"{KS}:0", decode=decode)
    assert torch.allclose(prev.after[1, [0, 2, 3]], torch.full((3,), prev.chance), atol=0.05)


def test_every_way_to_name_the_boundary_agrees(planted, toks):
    _, dec = planted
    ref = A.boundary_routing(dec, toks, f"{KS}:1", decode=decode)
    for spec in (BOUNDARY, range(24, 32), torch.arange(24, 32), lambda s: s in BOUNDARY, toks >= 24):
        r = A.boundary_routing(dec, toks, f"{KS}:1", spec, decode=decode)
        assert torch.equal(r.base, ref.base) and torch.equal(r.after, ref.after)
    only_dot = A.boundary_routing(dec, toks, f"{KS}:1", ["."], decode=decode)
    assert only_dot.frac_boundary < ref.frac_boundary and only_dot.boundary == "'.'"
    with pytest.raises(ValueError, match="decode"):
        A.boundary_routing(dec, toks, f"{KS}:1")  # no tokenizer, no decode: classes unknown
    with pytest.raises(ValueError, match="no vocabulary token"):
        A.boundary_routing(dec, toks, f"{KS}:1", ["§"], decode=decode)
    with pytest.raises(ValueError, match="shape"):
        A.boundary_routing(dec, toks, f"{KS}:1", toks[:2] >= 24)
