"""tl_vpd.sharing: save_pretrained / from_pretrained / push_to_hub, the Hub layout, model card and
target.json. Everything offline: any network access fails the test at once."""

import json
import shutil
import socket
import time

import huggingface_hub
import huggingface_hub.constants
import pytest
import torch
import yaml

import tl_vpd
from tl_vpd import Decomposition, io, sharing
from tl_vpd.data import default_corpus
from tl_vpd.evaluate import evaluate
from tl_vpd.report import EvalReport
from tl_vpd.target import target_config, train_target
from bridge_zoo import make_bridge
from bridge_zoo import tokens as bridge_tokens
from model_zoo import corpus, make_model, small_cfg, tokens  # skips this module on TL 4
from transformer_lens import HookedTransformer  # noqa: E402  (after the TL-4 skip)

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY = dict(C=6, steps=3, faithfulness_warmup_steps=5, sites=("blocks.0.*",), log_every=0)


def _train(model, data, **kw):
    torch.manual_seed(0)
    return tl_vpd.decompose(model, small_cfg(**{**TINY, **kw}), data)


@pytest.fixture(scope="module")
def model():
    return make_model("llama")


@pytest.fixture(scope="module")
def dec(model):
    return _train(model, corpus())


@pytest.fixture
def offline(monkeypatch, tmp_path, no_network):
    """Offline mode switched on after huggingface_hub was imported (as in a notebook), with an
    empty default cache."""
    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    return tmp_path


def assert_same_outputs(a, b, x):
    """Same causal importances, and the same logits masked by them (and by random masks)."""
    ga, gb = a.causal_importance(x), b.causal_importance(x)
    assert ga.keys() == gb.keys()
    for site in ga:
        assert torch.equal(ga[site], gb[site]), site
    assert torch.equal(a.run_masked(x, ga), b.run_masked(x, gb))
    g = torch.Generator().manual_seed(5)
    masks = {n: torch.rand(*x.shape, c.C, generator=g) for n, c in a.components.items()}
    deltas = {n: torch.rand(*x.shape, generator=g) for n in a.sites}
    assert torch.equal(a.run_masked(x, masks, deltas), b.run_masked(x, masks, deltas))


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


# ------------------------------------------------------------------ (1) round trips
def test_round_trip_hooked(dec, model, tmp_path):
    out = dec.save_pretrained(tmp_path / "d")
    assert out == tmp_path / "d"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [io.SPEC_FILE, io.COMPONENTS_FILE, io.CI_FILE, sharing.TARGET_FILE, sharing.CARD_FILE])
    again = tl_vpd.from_pretrained(out, model=model)
    assert type(again) is Decomposition and again.model is model and again.config == dec.config
    assert_same_outputs(dec, again, tokens(2, 8, seed=4))
    assert Decomposition.from_pretrained(str(out), model).sites == dec.sites
    rec = json.loads((out / sharing.TARGET_FILE).read_text())
    assert rec["backend"] == "hooked_transformer" and rec["target_type"] == "HookedTransformer"
    assert rec["name"] is None and rec["path"] is None  # built by hand: no way to rebuild it
    assert rec["transformer_lens_version"] and rec["tl_vpd_version"] == tl_vpd.__version__


def test_round_trip_bridge(tmp_path):
    bridge = make_bridge("llama")
    dec = _train(bridge, torch.randint(0, 101, (64, 12), generator=torch.Generator().manual_seed(0)))
    dec.save_pretrained(tmp_path / "d")
    again = tl_vpd.from_pretrained(str(tmp_path / "d"), bridge)
    assert_same_outputs(dec, again, bridge_tokens(2, 8, seed=4))
    rec = json.loads((tmp_path / "d" / sharing.TARGET_FILE).read_text())
    assert rec["backend"] == "transformer_bridge" and rec["compatibility_mode"] is False
    assert rec["name"] is None  # a random HF model: it has no hub id


def test_a_different_model_is_refused(dec, tmp_path):
    dec.save_pretrained(tmp_path / "d")
    with pytest.raises(ValueError, match="not the decomposition's target"):
        tl_vpd.from_pretrained(tmp_path / "d", model=make_model("gpt2"))


def test_without_model_and_no_recipe_says_pass_model(dec, tmp_path, no_network, monkeypatch):
    dec.save_pretrained(tmp_path / "d")
    with pytest.raises(ValueError, match=r"no way to rebuild the target.*model=target"):
        tl_vpd.from_pretrained(tmp_path / "d")
    dec.save(tmp_path / "plain")  # no target.json at all
    with pytest.raises(FileNotFoundError, match=r"no target\.json.*model=target"):
        tl_vpd.from_pretrained(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="No such file or directory"):
        tl_vpd.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        tl_vpd.from_pretrained(tmp_path / "d" / sharing.CARD_FILE, dec.model)
    monkeypatch.chdir(tmp_path)  # a mistyped relative path is not looked up on the Hub
    with pytest.raises(FileNotFoundError, match="No such file or directory"):
        tl_vpd.from_pretrained("d/typo", dec.model)
    assert tl_vpd.from_pretrained("d", dec.model).sites == dec.sites
    assert not no_network


# ------------------------------------------------------------------ (2) a recorded target run
def test_rebuilds_a_recorded_target_run(tmp_path, no_network):
    data = default_corpus(seq_len=32, vocab_size=320, max_bytes=300_000)
    cfg = target_config(320, d_model=32, n_layers=2, n_heads=4, n_ctx=32)
    run = train_target(cfg, data.train, data.val, steps=4, batch_size=8, warmup_steps=1,
                       eval_every=4, eval_batches=1, run_dir=tmp_path / "target",
                       tokenizer=data.tokenizer, progress=False)
    dec = _train(run.model, data.train[:64], seq_len=32)
    with pytest.raises(FileNotFoundError, match="not a target run directory"):
        dec.save_pretrained(tmp_path / "x", target_path=tmp_path)
    dec.save_pretrained(tmp_path / "d", target_path=tmp_path / "target")
    rec = json.loads((tmp_path / "d" / sharing.TARGET_FILE).read_text())
    assert rec["path"] == str((tmp_path / "target").resolve())
    again = tl_vpd.from_pretrained(tmp_path / "d")
    assert isinstance(again.model, HookedTransformer) and again.model is not run.model
    assert_same_outputs(dec, again, data.val[:2, :16])
    assert "target run directory" in (tmp_path / "d" / sharing.CARD_FILE).read_text()
    # A recorded run that has gone: say so, and what to do.
    shutil.rmtree(tmp_path / "target")
    with pytest.raises(ValueError, match=r"does not exist on this machine.*model=target"):
        tl_vpd.from_pretrained(tmp_path / "d")
    assert not no_network


# ------------------------------------------------------------------ (3) the Hub cache
def _cache_repo(cache, repo_id, src):
    """Lay ``src`` out as a download of Hub model repo ``repo_id`` leaves it in ``cache``."""
    org, name = repo_id.split("/")
    repo = cache / f"models--{org}--{name}"
    shutil.copytree(src, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def test_loads_from_the_hub_cache_offline(dec, model, tmp_path, offline, monkeypatch):
    dec.save_pretrained(tmp_path / "d")
    _cache_repo(tmp_path / "hub", "some-org/tiny-vpd", tmp_path / "d")
    x = tokens(2, 8, seed=4)
    again = tl_vpd.from_pretrained("some-org/tiny-vpd", model, cache_dir=tmp_path / "hub")
    assert_same_outputs(dec, again, x)
    by_commit = tl_vpd.from_pretrained("some-org/tiny-vpd", model, revision=COMMIT,
                                       cache_dir=tmp_path / "hub")
    assert by_commit.sites == dec.sites
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # set after import: honoured
    assert_same_outputs(dec, tl_vpd.from_pretrained("some-org/tiny-vpd", model), x)
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=r"'some-org/not-cached'.*not in the local Hugging "
                                              r"Face cache.*HF_HUB_OFFLINE=1"):
        tl_vpd.from_pretrained("some-org/not-cached", model)
    with pytest.raises(ConnectionError, match=r"'some-org/tiny-vpd' \(revision 'v2'\)"):
        tl_vpd.from_pretrained("some-org/tiny-vpd", model, revision="v2")
    assert time.monotonic() - start < 5 and not offline.joinpath("empty_hub").exists()


def test_unreachable_hub_fails_at_once(model, monkeypatch):
    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    downloads = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: downloads.append(a))

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=r"'some-org/tiny-vpd'.*unreachable"):
        tl_vpd.from_pretrained("some-org/tiny-vpd", model)
    assert time.monotonic() - start < 5 and not downloads


# ------------------------------------------------------------------ (4) a recorded model name
def test_recorded_tl_name_offline_fails_fast_naming_it(dec, model, tmp_path, offline,
                                                       monkeypatch):
    monkeypatch.setattr(model.cfg, "model_name", "gpt2")  # as from_pretrained("gpt2") records it
    dec.save_pretrained(tmp_path / "d")
    rec = json.loads((tmp_path / "d" / sharing.TARGET_FILE).read_text())
    assert rec["name"] == "gpt2" and rec["path"] is None
    card = (tmp_path / "d" / sharing.CARD_FILE).read_text()
    assert front_matter(card)["base_model"] == "gpt2"
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=r"model 'gpt2'.*offline mode is on"):
        tl_vpd.from_pretrained(tmp_path / "d")
    assert time.monotonic() - start < 5 and not offline.joinpath("empty_hub").exists()
    # A short name is resolved to the official one (TransformerLens drops the organisation).
    monkeypatch.setattr(model.cfg, "model_name", "pythia-70m")
    assert sharing.target_record(model, "hooked_transformer")["name"] == "EleutherAI/pythia-70m"


# ------------------------------------------------------------------ (5) the model card
def test_model_card_with_eval_report(dec, model, tmp_path):
    report = evaluate(dec, corpus(16, seed=1), n_batches=1, batch_size=4, pgd_steps=(2,),
                      progress=False)
    dec.save_pretrained(tmp_path / "d", eval_report=report)
    card = (tmp_path / "d" / sharing.CARD_FILE).read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "tl_vpd" and "vpd" in meta["tags"]
    assert "base_model" not in meta and meta["tl_vpd_target"] == "a custom HookedTransformer"
    for site, c in dec.components.items():
        assert f"| {site} | [{c.d_out}, {c.d_in}] | {c.C} |" in card
    assert f"`{dec.spec.ci_fn}`" in card and f"| `steps` | {dec.config.steps} |" in card
    assert "## Evaluation" in card and "| mode | CE | KL(target‖·) |" in card
    unmasked = f"{report.row('unmasked')['ce']:.4f}"
    assert any(line.startswith("| unmasked |") and unmasked in line for line in card.splitlines())
    assert "PGD 2 steps" in card and "tl_vpd.from_pretrained(" in card
    saved = EvalReport.from_json(tmp_path / "d" / sharing.REPORT_FILE)
    assert json.dumps(saved.to_dict()) == json.dumps(report.to_dict())
    # Loading ignores the card and the report; a save without a report drops a stale one.
    assert tl_vpd.from_pretrained(tmp_path / "d", model).sites == dec.sites
    dec.save_pretrained(tmp_path / "d")
    assert not (tmp_path / "d" / sharing.REPORT_FILE).exists()
    assert "## Evaluation" not in (tmp_path / "d" / sharing.CARD_FILE).read_text()


# ------------------------------------------------------------------ (6) push_to_hub
def test_push_to_hub_offline_fails_before_anything(dec, monkeypatch, offline):
    calls = []
    for method in ("create_repo", "upload_folder"):
        monkeypatch.setattr(huggingface_hub.HfApi, method,
                            lambda self, *a, _m=method, **k: calls.append(_m))
    monkeypatch.setattr(sharing, "save_pretrained", lambda *a, **k: calls.append("save"))
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=r"push.*'some-org/tiny-vpd'.*offline mode is on "
                                              r"\(HF_HUB_OFFLINE=1\).*save_pretrained"):
        dec.push_to_hub("some-org/tiny-vpd")
    # Online but unreachable: the probe fails before any upload.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(socket, "create_connection",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network is unreachable")))
    with pytest.raises(ConnectionError, match=r"'some-org/tiny-vpd'.*unreachable"):
        dec.push_to_hub("some-org/tiny-vpd", private=True)
    assert time.monotonic() - start < 5 and not calls and not offline.joinpath("empty_hub").exists()
