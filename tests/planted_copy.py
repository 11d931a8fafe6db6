"""A planted target for the pruning tests: a previous-token copying head with a distractor head,
and its exact decomposition built by hand.

One attention-only layer (rotary, no norms). Residual dims: 0 constant, 1..6 the token's one-hot,
7..12 read by the unembedding (logit of token i = 5 · dim 7+i), 13..18 read by nothing.

* head 0 attends to the previous token (the rotary trick of ``planted.py``), copies its one-hot
  into dims 7..12: the prediction at ``t`` is the token at ``t − 1``;
* head 1 attends uniformly and writes the tokens' one-hots into dims 13..18, which no logit reads.

Every site is decomposed into its rank-1 pieces (``Δ = 0``), ``C = 12``: ``W_Q``/``W_K`` c=0 is
head 0's piece (the others are empty and never fire); ``W_V`` and ``W_O`` c = 6·h + i carry
token ``i`` through head ``h``. Base CI: the Q/K piece fires everywhere, a ``W_V`` piece on its
token, a head-0 ``W_O`` piece after its token, every head-1 ``W_O`` piece everywhere. The
mechanism of the prediction at the last position ``T − 1`` is therefore ``W_Q:0@T−1``,
``W_K:0@T−2``, ``W_V:i@T−2`` and ``W_O:i@T−1`` with ``i`` the token at ``T − 2``.
"""

import pytest
import torch

import tl_vpd
from tl_vpd.target_model import HAS_HOOKED_TRANSFORMER

if not HAS_HOOKED_TRANSFORMER:
    pytest.skip("the planted target is a HookedTransformer (TransformerLens < 4 only)",
                allow_module_level=True)

from planted import threshold_ci  # noqa: E402  (after the TL-4 skip)

N_TOK, C = 6, 12
QS, KS, VS, OS = (f"blocks.0.attn.{w}" for w in ("W_Q", "W_K", "W_V", "W_O"))


def copy_model():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=1, d_model=20, n_heads=2, d_head=8, n_ctx=8, d_vocab=N_TOK, attn_only=True,
        act_fn="gelu", normalization_type=None, positional_embedding_type="rotary", rotary_dim=4,
        rotary_base=10, seed=0)
    model = HookedTransformer(cfg)
    a = model.blocks[0].attn
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E[:, 0] = 1.0
        model.embed.W_E[:, 1:1 + N_TOK] = torch.eye(N_TOK)
        cos, sin = a.rotary_cos[1], a.rotary_sin[1]
        k = 7.0 * torch.tensor([1.0, 1.0, 0.0, 0.0])
        a.W_K[0, 0, :4] = k
        a.W_Q[0, 0, :4] = k * cos - torch.cat([-k[2:], k[:2]]) * sin  # at offset 1 it meets k
        for i in range(N_TOK):
            a.W_V[0, 1 + i, i] = a.W_V[1, 1 + i, i] = 1.0
            a.W_O[0, i, 7 + i] = 1.0
            a.W_O[1, i, 13 + i] = 1.0
            model.unembed.W_U[7 + i, i] = 5.0
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def copy_decomposition(model):
    dec = tl_vpd.Decomposition.from_model(model, C=C, ci_fn="mlp", ci_hidden=1, init="svd")
    comps = dec.components
    a = model.blocks[0].attn
    with torch.no_grad():
        for site, W in ((QS, a.W_Q), (KS, a.W_K)):
            U, V = torch.zeros_like(comps[site].U), torch.zeros_like(comps[site].V)
            U[:, 0], V[0, 0] = W.permute(0, 2, 1).reshape(16, 20)[:, 0], 1.0
            comps[site].U.copy_(U)
            comps[site].V.copy_(V)
        U, V = torch.zeros_like(comps[VS].U), torch.zeros_like(comps[VS].V)
        Uo, Vo = torch.zeros_like(comps[OS].U), torch.zeros_like(comps[OS].V)
        for h in range(2):
            for i in range(N_TOK):
                c = 6 * h + i
                U[8 * h + i, c], V[c, 1 + i] = 1.0, 1.0
                Uo[(7 if h == 0 else 13) + i, c], Vo[c, 8 * h + i] = 1.0, 1.0
        comps[VS].U.copy_(U)
        comps[VS].V.copy_(V)
        comps[OS].U.copy_(Uo)
        comps[OS].V.copy_(Vo)
        ci = threshold_ci(dec.ci_fn)  # 1 where v_c·x = 1, 0 where it is 0
        for j, site in enumerate(ci.site_names):
            if site in (QS, KS):
                ci.w2[j][1:] = 0.0  # the empty pieces never fire
            if site == OS:
                ci.w2[j][6:] = 0.0  # head 1's output pieces: always important
                ci.b2[j][6:] = 1.0
    for site in dec.sites:
        assert dec.components[site].delta.abs().max() < 1e-6
    return dec


@pytest.fixture(scope="module")
def copy_target():
    model = copy_model()
    return model, copy_decomposition(model)
