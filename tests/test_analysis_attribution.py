"""tl_vpd.analysis.attribution: edges of the planted target's attribution graph by hand."""

import pytest
import torch

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


def test_dataset_attributions_by_hand(planted, toks):
    model, dec = planted
    data = toks[:4]
    da = A.dataset_attributions(dec, data, batch_size=2, progress=False)
    assert da.n_tokens == data.numel()
    comps = dec.components
    _, xs = dec.run_target(data)
    ci = dec.ci(xs).lower
    a = {s: comps[s].inner_acts(xs[s]).detach() for s in dec.sites}
    O0, V1 = "blocks.0.attn.W_O", "blocks.1.attn.W_V"
    U_O0, V_V1 = comps[O0].U.detach(), comps[V1].V.detach()
    ag = (a[O0] * ci[O0]).sum((0, 1))  # Σ a1 g1
    rms = a[V1].pow(2).mean((0, 1)).sqrt()
    want = (V_V1 @ U_O0).T * ag[:, None]  # the residual path is linear: ∂a2/∂a1 = v2 · u1
    assert torch.allclose(da.raw[(O0, V1)].float(), want, rtol=1e-4, atol=1e-5)
    norm = want / (ci[O0].sum((0, 1))[:, None] * rms[None, :])
    assert torch.allclose(da.normalized(O0, V1).float(), norm, rtol=1e-4, atol=1e-5)
    # One prompt: the K -> O sums (across positions, through the pattern) match the prompt graph
    # with every target node present (sources with CI 0 carry weight ~0 either way).
    one = A.dataset_attributions(dec, toks[:1], progress=False)
    _, xs1 = dec.run_target(toks[:1])
    every = {s: g[0].detach() + 1e-12 for s, g in dec.ci(xs1).lower.items()}
    g = A.attribution_graph(dec, toks[0], ci=every, progress=False)
    by_graph = torch.zeros(4, 4)
    for s, d, w in g.edges:
        ns, nd = g.nodes[s], g.nodes[d]
        if ns.site == KS and nd.site == "blocks.1.attn.W_O":
            by_graph[ns.c, nd.c] += w
    assert by_graph.abs().sum() > 0
    assert torch.allclose(one.raw[(KS, "blocks.1.attn.W_O")].float(), by_graph, rtol=1e-4, atol=1e-5)
    absolute = A.dataset_attributions(dec, toks[:1], absolute=True, progress=False)
    assert absolute.absolute and not torch.allclose(absolute.raw[(KS, "blocks.1.attn.W_O")],
                                                    one.raw[(KS, "blocks.1.attn.W_O")])
    assert "top edges" in repr(da)
