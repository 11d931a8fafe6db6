"""tl_vpd.analysis.attribution: edges of the planted target's attribution graph by hand."""

import pytest

from tl_vpd import analysis as A
from planted import KS, decode, planted, toks  # noqa: F401  (fixtures)


def test_attribution_graph_direct_paths(planted, toks):
    model, dec = planted
    prompt = toks[0]
    g = A.attribution_graph(dec, prompt, decode=decode, progress=False)
    pos, y = g.target
    assert pos == 15 and y == int(model(prompt[None])[0, -1].argmax())
    out = len(g.nodes) - 1
    comps = dec.components
    U_O0, U_O1 = comps["blocks.0.attn.W_O"].U.detach(), comps["blocks.1.attn.W_O"].U.detach()
    V_V1 = comps["blocks.1.attn.W_V"].V.detach()
    W_U = model.W_U
    checked = 0
    for i, nd in enumerate(g.nodes):
        if nd.kind != "component":
            continue
        a_g = nd.act * nd.ci
        if nd.site == "blocks.1.attn.W_O" and nd.pos == pos:  # straight to the logit
            assert g.edge(i, out) == pytest.approx(float(U_O1[:, nd.c] @ W_U[:, y]) * a_g, rel=1e-4, abs=1e-6)
            checked += 1
        if nd.site == "blocks.0.attn.W_O":
            # Only the residual path counts: layer-1 subcomponents are stop-gradient.
            want = float(U_O0[:, nd.c] @ W_U[:, y]) * a_g if nd.pos == pos else 0.0
            assert g.edge(i, out) == pytest.approx(want, rel=1e-4, abs=1e-6)
            for c2 in range(4):
                if (dst := _maybe(g, "blocks.1.attn.W_V", nd.pos, c2)) is not None:
                    want = float(V_V1[c2] @ U_O0[:, nd.c]) * a_g
                    assert g.edge(i, dst) == pytest.approx(want, rel=1e-4, abs=1e-6)
                    checked += 1
        if nd.site == "blocks.0.attn.W_Q":  # linear in the embedding: the edge is a itself
            assert g.edge(nd.pos, i) == pytest.approx(nd.act, rel=1e-4, abs=1e-6)
    assert checked >= 5
    for s, d, _ in g.edges:  # causal: no edge from a later position
        assert g.nodes[s].pos <= g.nodes[d].pos
    # K -> O edges inside layer 1 exist (through the attention pattern) and run backwards in position.
    ko = [(g.nodes[s], g.nodes[d]) for s, d, _ in g.edges
          if g.nodes[s].site == KS and g.nodes[d].site == "blocks.1.attn.W_O"]
    assert any(a.pos < b.pos for a, b in ko)
    assert "top edges" in repr(g) and "<table>" in g._repr_html_()
    small = g.prune(0.5)
    assert all(abs(w) >= 0.5 for _, _, w in small.edges) and small.nodes[-1].kind == "output"


def _maybe(g, site, pos, c):
    try:
        return g.node_index(site, pos, c)
    except KeyError:
        return None
