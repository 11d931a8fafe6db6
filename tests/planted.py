"""A planted target for the analysis tests: a previous-token mechanism spanning heads 0, 2, 3 of
layer 1 (shared by the tests of tl_vpd.analysis and tl_vpd.vis).

The target is a 2-layer attention-only rotary model built by hand. Layer 1's query and key
matrices are each a sum of two rank-1 pieces: one reads a direction that is constant over tokens
and, through the rotary rotation, makes heads 0, 2 and 3 attend to the previous token; the other
makes head 1 route word queries to syntax-boundary keys. The decomposition is also built by hand
(training one takes minutes on 2 CPU cores): its layer-1 Q/K subcomponents are exactly those
pieces, other sites get SVD subcomponents, and a per-subcomponent CI function is set so a
subcomponent fires where its feature is present. The analysis functions are not told any of this.
"""

import pytest
import torch

import tl_vpd
from tl_vpd.target_model import HAS_HOOKED_TRANSFORMER

if not HAS_HOOKED_TRANSFORMER:  # every module importing this is skipped on TL 4, with the reason
    pytest.skip("the planted target is a HookedTransformer (TransformerLens < 4 only)",
                allow_module_level=True)

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "big", "red", "sun", "sky",
         "one", "two", "old", "new", "car", "bus", "map", "pen", "cup", "hat", "box", "egg"]
BOUNDARY = [".", ",", ";", "(", ")", '"', "'", "\n"]
VOCAB = WORDS + BOUNDARY  # ids 24..31 are syntax boundaries
PREV_HEADS = (0, 2, 3)
QS, KS = "blocks.1.attn.W_Q", "blocks.1.attn.W_K"


def decode(ids):
    return "".join(VOCAB[i] for i in ids)


def planted_model(dtype=torch.float32):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, n_heads=4, d_head=8, n_ctx=16, d_vocab=len(VOCAB), attn_only=True,
        act_fn="gelu", normalization_type=None, positional_embedding_type="rotary", rotary_dim=4,
        rotary_base=10, seed=0, dtype=dtype)
    model = HookedTransformer(cfg)
    g = torch.Generator().manual_seed(0)
    a0, a1 = model.blocks[0].attn, model.blocks[1].attn

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        E = torch.zeros(len(VOCAB), 16, dtype=dtype)
        E[:, 0] = 1.0  # constant direction
        E[:24, 1] = 1.0  # "word" feature
        E[24:, 2] = 1.0  # "boundary" feature
        E[:, 3:] = 0.5 * rand(len(VOCAB), 13)
        model.embed.W_E.copy_(E)
        for W in (a0.W_Q, a0.W_K, a0.W_V):  # layer 0: random, on dims 3.. only
            W[:, 3:] = 0.3 * rand(*W[:, 3:].shape)
        a0.W_O[..., 3:] = 0.3 * rand(*a0.W_O[..., 3:].shape)
        # Rotary acts on dims 0..3 of each head (rotary_dim 4, GPT-NeoX pairing (i, i+2)).
        cos, sin = a1.rotary_cos[1], a1.rotary_sin[1]
        k = 7.0 * torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=dtype)
        q = k * cos - torch.cat([-k[2:], k[:2]]) * sin  # rotated to position 1 it equals k
        for h in PREV_HEADS:
            a1.W_Q[h, 0, :4] = q
            a1.W_K[h, 0, :4] = k
        a1.W_Q[1, 1, 4] = 8.0  # head 1: word queries -> boundary keys, on an unrotated dim
        a1.W_K[1, 2, 4] = 8.0
        a1.W_V.copy_(0.3 * rand(*a1.W_V.shape))
        a1.W_O.copy_(0.3 * rand(*a1.W_O.shape))
        model.unembed.W_U.copy_(rand(16, len(VOCAB)))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def threshold_ci(ci):
    """Set a per-site MLP CI function (hidden 1) to g_c = clamp(0.2 gelu(10 (v_c·x) − 5)): 1 where
    v_c·x = 1, 0 where it is 0 (call under ``torch.no_grad()``); returns ``ci``."""
    for i in range(len(ci.site_names)):
        ci.w1[i].fill_(10.0)
        ci.b1[i].fill_(-5.0)
        ci.w2[i].fill_(0.2)
        ci.b2[i].zero_()
    return ci


def planted_decomposition(model):
    dtype = "float64" if model.cfg.dtype == torch.float64 else "float32"
    dec = tl_vpd.Decomposition.from_model(model, C=4, ci_fn="mlp", ci_hidden=1, init="svd", dtype=dtype)
    a1 = model.blocks[1].attn
    with torch.no_grad():
        for site, W, feature in ((QS, a1.W_Q, 1), (KS, a1.W_K, 2)):
            comp = dec.components[site]
            flat = W.permute(0, 2, 1).reshape(32, 16)  # the site matrix, [(head d_head), d_model]
            U, V = torch.zeros_like(comp.U), torch.zeros_like(comp.V)
            U[:, 0], V[0, 0] = flat[:, 0], 1.0  # c=0: the previous-token piece
            U[:, 1], V[1, feature] = flat[:, feature], 1.0  # c=1: head 1's piece
            V[2:, 3:] = torch.randn(2, 13, generator=torch.Generator().manual_seed(5))  # unused
            comp.U.copy_(U)
            comp.V.copy_(V)
        ci = threshold_ci(dec.ci_fn)
        for i, site in enumerate(ci.site_names):
            if site in (QS, KS):
                ci.w2[i][2:] = 0.0  # the unused subcomponents never fire
    for site in (QS, KS):
        assert dec.components[site].delta.abs().max() == 0
    return dec


@pytest.fixture(scope="module")
def planted():
    model = planted_model()
    return model, planted_decomposition(model)


@pytest.fixture(scope="module")
def toks():
    return torch.randint(0, len(VOCAB), (16, 16), generator=torch.Generator().manual_seed(0))
