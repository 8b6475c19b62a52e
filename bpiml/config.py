"""Typed configs: dataclasses with defaults, strict loading, saved beside every output.

Every config in bpiml is a dataclass deriving from `BaseConfig`. Loading from a dict rejects
unknown keys by name; `validate()` raises `ValueError` naming the key, the expected and the
actual value. A field may itself be a `BaseConfig` (`TrainConfig.model` is a `StudentConfig`):
it loads from a nested mapping and gets flags with its name as prefix (`--model-width`).
Fields whose name looks like a secret are never written out, and credentials inside a value (a
URI's `user:password@`, a `token=` query parameter) are redacted wherever bpiml writes or logs it
(`redact`).

Command lines: `add_arguments` adds one flag per field whose default is *suppressed*, so the
parsed namespace holds exactly the flags the user gave. `from_cli` then layers the dataclass
defaults, the `--config` file, the explicit flags and the smoke-test values, in that order: a flag
given explicitly always wins, even when it repeats its default. A field's `choices` go to argparse;
a bad value found by `validate()` is a `ConfigError` naming the key, which the jobs' command lines
turn into an argparse error naming the flag (`bpiml.runtime.jobcli.config_from_args`); `HelpFormatter` is the help layout of every command line.

The flags every job shares (`--num-workers`, `--cpus-per-worker`, `--gpus-per-worker`,
`--max-reject-rate`, `--s3-endpoint`, `--resource-wait-s`) are declared once, below (`workers_field`
...), so they mean the same on every job.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import types
import typing
from typing import Any, Self

import yaml

from bpiml.data import storage

_SECRET_WORDS = ("secret", "password", "token", "credential", "access_key")


def is_secret_key(key: str) -> bool:
    """True for keys that must never be logged or saved (`aws_secret_access_key`, `token`...)."""
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


# `scheme://user:password@host`, and query parameters whose name says secret (`?token=...`).
_URI_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):[^/\s@]+@")
_QUERY_SECRET = re.compile(r"(?P<head>[?&][^=&\s]*(?:secret|password|token|signature|credential)[^=&\s]*=)[^&\s\"']+",
                           re.IGNORECASE)
REDACTED = "***"


def redact(value: Any) -> Any:
    """`value` with credentials embedded in URIs replaced by `***` (strings, and inside lists and dicts)."""
    if isinstance(value, str):
        return _QUERY_SECRET.sub(rf"\g<head>{REDACTED}", _URI_PASSWORD.sub(rf"\g<head>:{REDACTED}@", value))
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written (examples keep their lines); an option's aliases share one metavar."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        return f"{', '.join(action.option_strings)} {self._format_args(action, self._get_default_metavar_for_optional(action))}"


class ConfigError(ValueError):
    """A bad value of one config key: `key` (dotted in nested configs: `model.width`) and `detail`
    ("must be in [1, inf], got 0"); the message is `<key> <detail>`, the command line's `<flag> <detail>`."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"{key} {detail}")
        self.key, self.detail = key, detail

    def nested(self, prefix: str) -> ConfigError:
        return ConfigError(f"{prefix}.{self.key}", self.detail)


def flag_name(key: str) -> str:
    """The command-line flag of a config key: `num_workers` -> `--num-workers`, `model.width` -> `--model-width`."""
    return "--" + key.replace(".", "-").replace("_", "-")


def field_type(cls: type, name: str) -> Any:
    """The field's type with `X | None` unwrapped to `X`."""
    kind = typing.get_type_hints(cls)[name]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind


def _nested_cls(cls: type, name: str) -> type[BaseConfig] | None:
    kind = field_type(cls, name)
    return kind if isinstance(kind, type) and issubclass(kind, BaseConfig) else None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _help(f: dataclasses.Field, default: Any) -> str:
    text = f.metadata.get("help", "") + (" (repeatable)" if f.metadata.get("repeat") else "")
    if "default" in text.lower() or default in ("", None) or default == []:  # nothing worth showing
        return text.replace("%", "%%")
    shown = ("on" if default else "off") if isinstance(default, bool) else default
    return f"{text} (default: {shown})".replace("%", "%%")


@dataclasses.dataclass
class BaseConfig:
    """Base for all configs. Subclasses add fields with a one-line help each (see `field`)."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        if not isinstance(values, dict):
            raise ValueError(f"{cls.__name__}: expected a mapping of keys, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
            )
        values = dict(values)
        for f in dataclasses.fields(cls):  # a file's text in a flag's syntax (`gpus_per_worker: auto`)
            parse = f.metadata.get("parse")
            if parse is not None and isinstance(values.get(f.name), str):
                try:
                    values[f.name] = parse(values[f.name])
                except (ValueError, argparse.ArgumentTypeError) as err:
                    raise ConfigError(f.name, str(err)) from None
        for name in known & set(values):
            nested = _nested_cls(cls, name)
            if nested is not None and isinstance(values[name], dict):
                try:
                    values[name] = nested.from_dict(values[name])
                except ConfigError as err:
                    raise err.nested(name) from None
            elif nested is not None and not isinstance(values[name], nested):
                raise ValueError(f"{cls.__name__}.{name} must be a mapping of {nested.__name__} keys, "
                                 f"got {type(values[name]).__name__}")
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def load(cls, path: str) -> Self:
        """Load a JSON (or YAML) file, local or s3://."""
        text = storage.read_bytes(path).decode()
        values = (yaml.safe_load(text) or {}) if path.endswith((".yaml", ".yml")) else json.loads(text)
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
        return cls.from_dict(values)

    def validate(self) -> None:
        """Override to check ranges; raise ConfigError (or ValueError) naming the key. Nested configs
        validate too, their keys prefixed with the field's name."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, BaseConfig):
                try:
                    value.validate()
                except ConfigError as err:
                    raise err.nested(f.name) from None

    def to_dict(self) -> dict[str, Any]:
        return _drop_secrets(dataclasses.asdict(self))

    def to_json(self) -> str:
        """What is saved and shown: secrets dropped, credentials in values redacted (`to_dict` keeps
        them, since it is what the job's own workers receive)."""
        return json.dumps(redact(self.to_dict()), indent=2, sort_keys=True, default=str)

    def save(self, uri: str) -> None:
        storage.write_bytes(uri, (self.to_json() + "\n").encode())

    def replace(self, **changes: Any) -> Self:
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    # --- command line -------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | Any, prefix: str = "",
                      groups: argparse.ArgumentParser | None = None) -> None:
        """One `--flag` per field (`snake_case` -> `--snake-case`), nested configs as `--<name>-<field>`
        (in a group `<name> options` of `groups` when given).

        Defaults are suppressed (the namespace holds only what was given) and shown in the help.
        """
        for f in dataclasses.fields(cls):
            nested = _nested_cls(cls, f.name)
            if nested is not None:
                target = groups.add_argument_group(f"{f.name} options") if groups is not None else parser
                nested.add_arguments(target, prefix=f"{prefix}{f.name}.", groups=groups)
                continue
            dest = prefix + f.name
            flag = "--" + dest.replace(".", "-").replace("_", "-")
            default = _default(f)
            kind = field_type(cls, f.name)
            common = {"dest": dest, "default": argparse.SUPPRESS, "help": _help(f, default)}
            if f.metadata.get("choices"):
                common["choices"] = f.metadata["choices"]
            if f.metadata.get("metavar"):
                common["metavar"] = f.metadata["metavar"]
            if kind is bool:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
            elif typing.get_origin(kind) in (list, tuple):
                item = (typing.get_args(kind) or (str,))[0]
                if f.metadata.get("repeat"):
                    names = dict.fromkeys([flag, f.metadata["repeat"]])  # the alias may be the flag itself
                    parser.add_argument(*names, action="extend", nargs="+", type=item, **common)
                else:
                    parser.add_argument(flag, nargs="*", type=item, **common)
            else:
                parse = f.metadata.get("parse") or (kind if kind in (int, float, str) else str)
                parser.add_argument(flag, type=parse, **common)

    @classmethod
    def explicit_values(cls, namespace: argparse.Namespace) -> dict[str, Any]:
        """The fields given on the command line, nested ones as nested dicts."""
        values: dict[str, Any] = {}
        for key, value in vars(namespace).items():
            head, _, rest = key.partition(".")
            if head not in {f.name for f in dataclasses.fields(cls)}:
                continue
            if rest:
                values.setdefault(head, {})[rest] = value
            else:
                values[head] = value
        return values

    @classmethod
    def from_cli(cls, args: argparse.Namespace, smoke_test: dict[str, Any] | None = None) -> Self:
        """The config of a job's command line: defaults < `--config FILE` < explicit flags < smoke test."""
        values: dict[str, Any] = {}
        if getattr(args, "config", None):
            values = cls.load(args.config).to_dict()
        values = _merge(values, cls.explicit_values(args))
        if smoke_test and getattr(args, "smoke_test", False):
            values = _merge(values, smoke_test)
        return cls.from_dict(values)

    @classmethod
    def from_args(cls, namespace: argparse.Namespace) -> Self:
        return cls.from_dict(cls.explicit_values(namespace))


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _drop_secrets(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _drop_secrets(v) if isinstance(v, dict) else v for k, v in values.items() if not is_secret_key(k)}


def field(default: Any, help: str, repeat: str | None = None,  # noqa: A002 - mirrors argparse
          choices: typing.Sequence[Any] | None = None, parse: typing.Callable[[str], Any] | None = None,
          metavar: str | None = None) -> Any:
    """A dataclass field with a one-line help text used for CLI flags and docs.

    `repeat="--dataset"` (list fields): the flag may be given many times, also under that singular name,
    and the values accumulate. `choices`: the values argparse accepts (and shows in --help);
    `parse`: the function turning the flag's text into the value (default: the field's type)."""
    metadata: dict[str, Any] = {"help": help}
    for key, value in (("repeat", repeat), ("choices", choices), ("parse", parse), ("metavar", metavar)):
        if value:
            metadata[key] = value
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    if isinstance(default, BaseConfig):
        return dataclasses.field(default_factory=lambda: dataclasses.replace(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_range(name: str, value: float, low: float | None = None, high: float | None = None) -> None:
    """Raise ConfigError naming `name` when `value` falls outside [low, high]."""
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ConfigError(name, f"must be in {bounds}, got {value!r}")


def check_choice(name: str, value: Any, choices: typing.Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(name, f"must be one of {choices}, got {value!r}")


def require(config: BaseConfig, *names: str) -> None:
    """Raise ConfigError `<name> is required` for the first of `names` that is empty."""
    for name in names:
        if not getattr(config, name):
            raise ConfigError(name, "is required")


# --- the flags every job shares --------------------------------------------------------------------
AUTO = "auto"


def parse_gpus(text: str) -> float | None:
    """`--gpus-per-worker` text: a number >= 0, or `auto` (None: the job decides by what its work is)."""
    if text.strip().lower() == AUTO:
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 or '{AUTO}', got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 or '{AUTO}', got {text!r}")
    return value


def workers_field(default: int, what: str) -> Any:
    """`--num-workers`: how many parallel units (actors, training workers, tasks) the job runs."""
    return field(default, what)


def cpus_field(default: float, what: str) -> Any:
    """`--cpus-per-worker`: CPUs Ray reserves for each of them (fractional allowed)."""
    return field(default, f"CPUs reserved per {what}")


def gpus_field(what: str) -> Any:
    """`--gpus-per-worker`: GPUs per parallel unit; None (`auto`) = by the job's intent."""
    return field(None, f"GPUs per {what}: a number (0 = CPU only) or auto = decided by what the job runs "
                       "(see docs/deployment.md), never by what the cluster has at submission (default: auto)",
                 parse=parse_gpus, metavar="N|auto")


def reject_rate_field(default: float, what: str = "images") -> Any:
    return field(default, f"fail the job (after writing everything) when a larger share of {what} is rejected")


def resource_wait_field() -> Any:
    return field(600.0, "wait this long (s) for the cluster (its autoscaler) to offer the CPUs/GPUs asked for")


def s3_endpoint_field() -> Any:
    return field(None, "S3-compatible endpoint URL (MinIO, SeaweedFS); default: the AWS environment "
                       "(AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL)")


def check_job_resources(config: Any, min_workers: int = 1, min_cpus: float = 0.01) -> None:
    """Ranges of the shared flags (those the config has)."""
    if hasattr(config, "num_workers"):
        check_range("num_workers", config.num_workers, min_workers)
    if hasattr(config, "cpus_per_worker"):
        check_range("cpus_per_worker", config.cpus_per_worker, min_cpus)
    if getattr(config, "gpus_per_worker", None) is not None:
        check_range("gpus_per_worker", config.gpus_per_worker, 0)
    if hasattr(config, "max_reject_rate"):
        check_range("max_reject_rate", config.max_reject_rate, 0, 1)
    if hasattr(config, "resource_wait_s"):
        check_range("resource_wait_s", config.resource_wait_s, 0)
