"""tl_vpd.analysis as a whole: every entry point on a GPT-2-style model (LayerNorm, MLP sites,
learned positional embeddings)."""

import torch

import tl_vpd
from tl_vpd import analysis as A
from model_zoo import make_model, tokens as zoo_tokens


def test_pipeline_on_a_gpt2_style_model():
    """LayerNorm, MLP sites and learned positional embeddings go through every entry point."""
    model = make_model("gpt2")
    toks = zoo_tokens(batch=4, seq=10)
    dec = tl_vpd.Decomposition.from_model(model, C=5, seed=2)
    info = A.subcomponent(dec, "blocks.0.mlp.W_out", 3, toks, progress=False)
    assert info.predicts and "approximate" in info.reads_note and info.head_fractions is None
    assert A.subcomponent(dec, "blocks.1.mlp.W_in", 0).reads
    assert isinstance(A.find_prev_token_subcomponents(dec, toks, min_heads=1, min_base=0.0), list)
    hm = A.hooked(dec)
    logits, cache = hm.run_with_cache(toks)
    assert torch.equal(logits, model(toks)) and "blocks.1.mlp.W_gate.hook_ci" not in cache.keys()
    assert cache["blocks.1.mlp.W_out.hook_ci"].shape == (4, 10, 5)
    g = A.attribution_graph(dec, toks[0], progress=False, min_abs=1e-4)
    kinds = {g.nodes[s].site for s, _, _ in g.edges}
    assert None in kinds and "blocks.0.mlp.W_in" in kinds  # embeddings and MLP subcomponents
    w_in = [e for e in g.edges if g.nodes[e[0]].site == "blocks.0.mlp.W_in"
            and g.nodes[e[1]].site == "blocks.0.mlp.W_out"]
    assert w_in and all(g.nodes[s].pos == g.nodes[d].pos for s, d, _ in w_in)  # through the GELU
