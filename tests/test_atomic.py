"""tl_vpd.atomic: a write either completes or leaves the old file untouched."""

import os

import pytest

from tl_vpd import atomic
from tl_vpd.config import VPDConfig


def test_write_replaces_contents(tmp_path):
    p = tmp_path / "a.yaml"
    atomic.write_text(p, "one")
    atomic.write_text(p, "two")
    assert p.read_text() == "two" and os.listdir(tmp_path) == ["a.yaml"]


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    """A config rewritten at a checkpoint used to be truncated to 0 bytes by a kill mid-write."""
    p = tmp_path / "config.yaml"
    VPDConfig(steps=7).to_file(p)

    def killed(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        VPDConfig(steps=9).to_file(p)
    assert VPDConfig.from_file(p).steps == 7
    assert os.listdir(tmp_path) == ["config.yaml"]  # no temporary file left behind
