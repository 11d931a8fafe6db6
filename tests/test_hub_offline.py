"""Loads by name from the Hugging Face hub (tl_vpd.data.corpus.load_from_hub, used by
load_hf_dataset_texts and tl_vpd.target.load_pretrained): local paths never reach the hub, offline
mode reads only the local cache, and nothing waits on a network. No test here needs the network:
every connection attempt fails the test at once."""

import json
import shutil
import socket
import time
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest

from tl_vpd.data.corpus import load_from_hub, load_hf_dataset_texts, local_path
from tl_vpd.target import load_pretrained
from tl_vpd.target_model import HAS_HOOKED_TRANSFORMER

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


@pytest.fixture
def offline(monkeypatch, tmp_path, no_network):
    """Offline mode switched on after the libraries were imported (as in a notebook), with empty
    caches."""
    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    return tmp_path


@pytest.fixture
def online(monkeypatch):
    """No offline variable, and the libraries online too (the test suite starts them offline)."""
    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)


@pytest.fixture
def online_unreachable(monkeypatch, online):
    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)


def _cache_hub_dataset(cache, repo_id, texts, build_dir):
    """Write ``texts`` into the datasets cache the way a download of hub dataset ``repo_id``
    leaves it (``<cache>/<org>___<name>/default/0.0.0/<commit>/``)."""
    data = build_dir / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    builder = datasets.load_dataset_builder("json", data_files={"train": str(data)},
                                            cache_dir=str(build_dir / "build"))
    builder.download_and_prepare()
    org, name = repo_id.split("/")
    entry = cache / f"{org}___{name}" / "default" / "0.0.0" / "0123abcd"
    shutil.copytree(builder.cache_dir, entry)
    info = json.loads((entry / "dataset_info.json").read_text())
    (entry / "dataset_info.json").write_text(json.dumps({**info, "config_name": "default"}))
    for arrow in entry.glob("*.arrow"):  # files are named after the dataset
        arrow.rename(entry / arrow.name.replace("json-", f"{name}-", 1))


def test_offline_dataset_not_cached_fails_at_once(offline, no_network):
    start = time.monotonic()
    for max_docs in (None, 5):
        with pytest.raises(ConnectionError, match=r"dataset 'some-org/some-dataset'.*not in the "
                                                  r"local Hugging Face cache.*offline mode is on "
                                                  r"\(HF_HUB_OFFLINE=1\)"):
            load_hf_dataset_texts("some-org/some-dataset", max_docs=max_docs)
    assert time.monotonic() - start < 5 and not no_network
    # The libraries' own flags are put back after the load.
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False and datasets.config.HF_HUB_OFFLINE is False


@pytest.mark.parametrize("var", ["HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_every_offline_variable_counts(offline, monkeypatch, var):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv(var, "true")
    with pytest.raises(ConnectionError, match=f"offline mode is on \\({var}=true\\)"):
        load_hf_dataset_texts("some-org/some-dataset")


def test_offline_dataset_in_the_cache_is_loaded(offline, no_network, monkeypatch):
    texts = ["first doc", "second doc", "third doc"]
    with monkeypatch.context() as m:  # building it would otherwise ping datasets' load counter
        m.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        _cache_hub_dataset(offline / "datasets", "some-org/some-dataset", texts, offline)
    assert load_hf_dataset_texts("some-org/some-dataset") == texts
    assert load_hf_dataset_texts("some-org/some-dataset", max_docs=2) == texts[:2]
    assert not no_network


@pytest.mark.skipif(not HAS_HOOKED_TRANSFORMER, reason="load_pretrained needs HookedTransformer "
                    "(TransformerLens < 4)")
@pytest.mark.filterwarnings("ignore:HookedTransformer.from_pretrained is deprecated")
def test_offline_model_not_cached_fails_at_once(offline, no_network):
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=r"model 'gpt2'.*not in the local Hugging Face cache"
                                              r".*offline mode is on"):
        load_pretrained("gpt2")
    assert time.monotonic() - start < 5 and not no_network


def test_online_unreachable_hub_fails_at_once(online_unreachable):
    for load in (lambda: load_hf_dataset_texts("some-org/some-dataset"),
                 lambda: load_pretrained("gpt2")):
        start = time.monotonic()
        with pytest.raises(ConnectionError, match=r"'(some-org/some-dataset|gpt2)'.*huggingface.co"
                                                  r":443\) is unreachable"):
            load()
        assert time.monotonic() - start < 5


def test_the_probe_runs_only_online(monkeypatch, online, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_from_hub("thing 'x'", lambda: "loaded") == "loaded"
    assert not no_network
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(AssertionError, match="network access"):  # the probe, before the load
        load_from_hub("thing 'x'", lambda: pytest.fail("loaded before probing"))


def test_local_dataset_paths_never_reach_the_hub(tmp_path, monkeypatch, online, no_network):
    (tmp_path / "docs.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    (tmp_path / "notes.txt").write_text("line one\nline two\n")
    datasets.Dataset.from_dict({"text": ["s", "t"]}).save_to_disk(str(tmp_path / "saved"))
    assert load_hf_dataset_texts(str(tmp_path / "docs.jsonl")) == ["a", "b"]
    assert load_hf_dataset_texts(str(tmp_path / "notes.txt"), max_docs=1) == ["line one"]
    assert load_hf_dataset_texts(str(tmp_path / "saved")) == ["s", "t"]
    monkeypatch.chdir(tmp_path)
    assert load_hf_dataset_texts("./docs.jsonl") == ["a", "b"]
    assert not no_network


@pytest.mark.parametrize("name", ["./typo", "../typo/data", "~/no-such-folder-here", "/no/such/dir",
                                  "docs.jsonl", "data/missing"])
def test_mistyped_local_paths_say_no_such_file(tmp_path, monkeypatch, online, no_network, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()  # so "data/missing" is a path inside an existing folder
    with pytest.raises(FileNotFoundError, match=f"No such file or directory: '{name}'"):
        load_hf_dataset_texts(name)
    assert not no_network


def test_hub_names_are_not_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert local_path("roneneldan/TinyStories") is None
    assert local_path("EleutherAI/pythia-1.4b", by_folder=False) is None  # a dot is no suffix
    (tmp_path / "gpt2").mkdir()  # a folder named like a model shadows datasets, not models
    assert local_path("gpt2") == Path("gpt2")
    assert local_path("gpt2", by_folder=False) is None


def test_load_pretrained_refuses_local_paths(tmp_path, no_network):
    with pytest.raises(FileNotFoundError, match="No such file or directory"):
        load_pretrained(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="is a local path.*load_target"):
        load_pretrained(str(tmp_path))
    assert not no_network
