"""Views render offline: no CDN URL is emitted, and headless Chromium shows the tokens."""

import re
import shutil
import subprocess

import pytest
import torch

pytest.importorskip("circuitsvis")

from tl_vpd import analysis as A, vis  # noqa: E402
from planted import KS, QS, VOCAB, WORDS, decode, planted_decomposition, planted_model  # noqa: E402

CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser") if shutil.which(b)), None)


@pytest.fixture(scope="module")
def views():
    model = planted_model()
    dec = planted_decomposition(model)
    toks = torch.randint(0, len(VOCAB), (16, 16), generator=torch.Generator().manual_seed(0))
    prompt = toks[0]
    h = A.harvest(dec, toks, decode=decode, progress=False)
    return {
        "attention": vis.attention_view(dec, prompt, 1, f"{QS}:0", decode=decode),
        "ci": vis.ci_view(dec, prompt, KS, 1, decode=decode),
        "ci_multi": vis.ci_view(dec, prompt, KS, [0, 1], decode=decode),
        "top": vis.top_samples_view(h, KS, k=3),
    }, [VOCAB[i] for i in prompt.tolist()]


def test_views_are_offline_html(views):
    vs, _ = views
    for name, v in vs.items():
        page = v.html()
        assert "unpkg" not in page and "cdn/esm.js" not in page, name
        assert page.count("var CircuitsVis=") == 1, name  # the bundle, inlined once
        assert page.count("CircuitsVis.render(") == len(v.widgets), name
        assert v._repr_html_() == v.fragment()
    assert len(vs["attention"].widgets) == 2  # target and ablated, side by side
    assert f"ablating {QS}:0" in vs["attention"].html()


def test_script_closing_tag_in_a_token_is_escaped():
    import circuitsvis as cv

    v = vis.View([("t", cv.tokens.colored_tokens(["a", "</script><b>x"], [0.0, 1.0]))])
    frag = v.fragment()
    body = frag.split("CircuitsVis.render(", 1)[1]
    assert "<\\/script><b>x" in body and body.count("</script>") == 1
    # A widget whose local_src does not hold the packaged bundle keeps its own source whole.
    other = type("Rendered", (), {"local_src": "<div id='w'></div><script>render()</script>"})()
    assert vis.View([("t", other)]).fragment().count("<script>render()</script>") == 1


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_views_render_in_headless_chromium(views, tmp_path):
    vs, prompt = views
    page = vis.View([w for v in vs.values() for w in v.widgets], "all views")
    path = page.save(tmp_path / "views.html")
    res = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--virtual-time-budget=5000", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    dom = re.sub(r"<script.*?</script>", "", res.stdout, flags=re.S)  # what React rendered
    text = " ".join(re.sub(r"<[^>]+>", " ", dom).split())
    # Attention patterns, twice (target and ablated), with the prompt's tokens listed.
    assert text.count("Head selector") == 2 and text.count("Tokens (click to focus)") == 2
    for w in {t for t in prompt if t in WORDS}:
        assert f" {w} " in f" {text} ", w
    # Colored tokens: one span per token of the prompt.
    ci_block = dom.split('class="colored-tokens"', 1)[1]
    assert ci_block.count("<span><span") >= len(prompt)
    # Top samples: the site selector and boundary tokens at the top contexts.
    assert "Subcomponent:" in text and KS in text
