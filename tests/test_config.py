"""Config helpers: strict loading, round trips, secrets never written, CLI precedence."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from bpiml.config import BaseConfig, ConfigError, check_choice, check_range, field, flag_name, parse_gpus, require


@dataclasses.dataclass
class Example(BaseConfig):
    name: str = field("a", "a name")
    count: int = field(2, "how many")
    ratio: float = field(0.5, "a fraction")
    flag: bool = field(False, "a switch")
    aws_secret_access_key: str | None = field(None, "never saved")

    def validate(self) -> None:
        check_range("count", self.count, 1)
        check_range("ratio", self.ratio, 0, 1)


def test_unknown_keys_and_out_of_range_values_name_the_key():
    with pytest.raises(ValueError, match="unknown Example key.*cuont"):
        Example.from_dict({"cuont": 3})
    with pytest.raises(ValueError, match=r"count must be in \[1, inf\], got 0"):
        Example.from_dict({"count": 0})
    with pytest.raises(ValueError, match="ratio"):
        Example().replace(ratio=1.5)


def test_round_trip_json_and_yaml_without_secrets(tmp_path):
    config = Example(name="b", count=3, aws_secret_access_key="s3cr3t")
    config.save(str(tmp_path / "c.json"))
    saved = (tmp_path / "c.json").read_text()
    assert "s3cr3t" not in saved and "aws_secret_access_key" not in saved
    assert Example.load(str(tmp_path / "c.json")) == dataclasses.replace(config, aws_secret_access_key=None)
    (tmp_path / "c.yaml").write_text("name: y\ncount: 7\n")
    assert Example.load(str(tmp_path / "c.yaml")) == Example(name="y", count=7)
    (tmp_path / "bad.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="bad.json"):
        Example.load(str(tmp_path / "bad.json"))


def test_cli_flags_override_the_config_file_and_smoke_test_last(tmp_path):
    parser = argparse.ArgumentParser()
    Example.add_arguments(parser)
    parser.add_argument("--config")
    parser.add_argument("--smoke-test", action="store_true")
    (tmp_path / "c.json").write_text(json.dumps({"name": "from-file", "count": 5, "ratio": 0.25}))
    args = parser.parse_args(["--config", str(tmp_path / "c.json"), "--count", "9", "--flag", "--smoke-test"])
    config = Example.from_cli(args, smoke_test={"ratio": 0.1})
    assert config == Example(name="from-file", count=9, ratio=0.1, flag=True)
    assert Example.from_cli(parser.parse_args(["--no-flag"])) == Example()


def test_a_flag_given_explicitly_wins_even_when_it_repeats_its_default(tmp_path):
    parser = argparse.ArgumentParser()
    Example.add_arguments(parser)
    parser.add_argument("--config")
    (tmp_path / "c.yaml").write_text("count: 7\nflag: true\n")
    # 2 and --no-flag are the defaults: before, such flags were mistaken for "not given" and the file won
    args = parser.parse_args(["--config", str(tmp_path / "c.yaml"), "--count", "2", "--no-flag"])
    assert Example.from_cli(args) == Example(count=2, flag=False)
    assert Example.from_cli(parser.parse_args(["--config", str(tmp_path / "c.yaml")])) == Example(count=7, flag=True)


@dataclasses.dataclass
class Outer(BaseConfig):
    epochs: int = field(5, "epochs")
    inner: Example = field(Example(), "a nested config")


def test_nested_configs_load_round_trip_and_get_prefixed_flags(tmp_path):
    outer = Outer.from_dict({"inner": {"count": 4}})
    assert outer.inner == Example(count=4) and Outer.from_dict(json.loads(outer.to_json())) == outer
    with pytest.raises(ValueError, match="unknown Example key.*cuont"):
        Outer.from_dict({"inner": {"cuont": 4}})
    with pytest.raises(ValueError, match="count must be in"):
        Outer.from_dict({"inner": {"count": 0}})
    parser = argparse.ArgumentParser()
    Outer.add_arguments(parser)
    parser.add_argument("--config")
    (tmp_path / "c.json").write_text(json.dumps({"inner": {"name": "file", "count": 3}}))
    args = parser.parse_args(["--config", str(tmp_path / "c.json"), "--inner-count", "8", "--epochs", "5"])
    assert Outer.from_cli(args) == Outer(epochs=5, inner=Example(name="file", count=8))
    assert "--inner-ratio" in parser.format_help() and "(default: 0.5)" in parser.format_help()


def test_the_training_defaults_are_the_papers_recipe():
    """docs/experiments.md "Defaults and the paper": 224 px, 20 epochs, BCE only, pretrained TinyViT-5M."""
    from bpiml.train.config import TrainConfig

    config = TrainConfig()
    assert (config.epochs, config.model.img_size, config.dice_weight) == (20, 224, 0.0)
    assert (config.model.backbone, config.model.backbone_weights) == ("tiny_vit_5m_224", "auto")
    assert config.supervision == "pseudo" and config.register == ""


@dataclasses.dataclass
class Choosy(BaseConfig):
    mode: str = field("a", "a mode", choices=("a", "b"))
    gpus: float | None = field(None, "GPUs", parse=parse_gpus)
    inner: Example = field(Example(), "nested")

    def validate(self) -> None:
        super().validate()
        require(self, "mode")
        check_choice("mode", self.mode, ("a", "b"))


def test_bad_values_are_config_errors_naming_the_key_and_nested_keys_are_dotted():
    with pytest.raises(ConfigError) as caught:
        Choosy.from_dict({"inner": {"count": 0}})
    assert (caught.value.key, caught.value.detail) == ("inner.count", "must be in [1, inf], got 0")
    assert flag_name(caught.value.key) == "--inner-count"
    with pytest.raises(ConfigError, match="mode is required"):
        Choosy(mode="").validate()
    with pytest.raises(ConfigError, match=r"mode must be one of \['a', 'b'\], got 'c'"):
        Choosy.from_dict({"mode": "c"})


def test_choices_and_parse_functions_reach_argparse(capsys):
    parser = argparse.ArgumentParser()
    Choosy.add_arguments(parser)
    assert Choosy.from_args(parser.parse_args(["--mode", "b", "--gpus", "auto"])) == Choosy(mode="b", gpus=None)
    assert Choosy.from_args(parser.parse_args(["--gpus", "0.5"])).gpus == 0.5
    for bad, flag in ((["--mode", "c"], "--mode"), (["--gpus", "-1"], "--gpus"), (["--gpus", "many"], "--gpus")):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(bad)
        assert exited.value.code == 2 and f"argument {flag}" in capsys.readouterr().err
    assert "{a,b}" in parser.format_help()
    assert Choosy.from_dict({"gpus": "auto"}).gpus is None and Choosy.from_dict({"gpus": "1"}).gpus == 1.0  # a file
    with pytest.raises(ConfigError, match="gpus must be a number >= 0 or 'auto', got 'many'"):
        Choosy.from_dict({"gpus": "many"})
