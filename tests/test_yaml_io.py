"""Config-file reading and writing: YAML floats without a dot, JSON, suffix checks."""

import pytest

from tl_vpd.yaml_io import read_config_file, read_yaml, write_config_file, write_yaml


def test_read_yaml_reads_scientific_notation_as_floats(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("lr: 5e-5\nbig: 1e7\nn: 3\nname: x\n")
    assert read_yaml(path) == {"lr": 5e-5, "big": 1e7, "n": 3, "name": "x"}
    assert isinstance(read_yaml(path)["big"], float)


def test_write_yaml_keeps_order(tmp_path):
    path = tmp_path / "b.yaml"
    write_yaml({"z": 1, "a": [1, 2]}, path)
    assert list(read_yaml(path)) == ["z", "a"]


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_config_file_round_trip(tmp_path, suffix):
    path = tmp_path / f"c{suffix}"
    write_config_file({"lr": 5e-5, "C": {"*": 4}}, path)
    assert read_config_file(path) == {"lr": 5e-5, "C": {"*": 4}}


def test_config_file_errors(tmp_path):
    with pytest.raises(ValueError, match=r"must end in one of \.yaml, \.yml, \.json"):
        write_config_file({}, tmp_path / "c.toml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        read_config_file(path)
