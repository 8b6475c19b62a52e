"""Typed configs: dataclasses with defaults, strict loading, saved beside every output.

Every config in bpiml is a dataclass deriving from `BaseConfig`. Loading from a dict rejects
unknown keys by name; `validate()` raises `ValueError` naming the key, the expected and the
actual value. Fields whose name looks like a secret are never written out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any, Self

_SECRET_WORDS = ("secret", "password", "token", "credential", "access_key")


def is_secret_key(key: str) -> bool:
    """True for keys that must never be logged or saved (`aws_secret_access_key`, `token`...)."""
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


@dataclasses.dataclass
class BaseConfig:
    """Base for all configs. Subclasses add fields with a one-line comment each."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
            )
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def load(cls, path: str) -> Self:
        """Load a JSON (or YAML) file, local or s3://."""
        from bpiml.data import storage

        text = storage.read_bytes(path).decode()
        if path.endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
        return cls.from_dict(values)

    def validate(self) -> None:
        """Override to check ranges; raise ValueError naming the key."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if not is_secret_key(k)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    def save(self, uri: str) -> None:
        from bpiml.data import storage

        storage.write_bytes(uri, (self.to_json() + "\n").encode())

    def replace(self, **changes: Any) -> Self:
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    # --- command line -------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one `--flag` per field (`snake_case` -> `--snake-case`), help from field metadata."""
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            help_text = f.metadata.get("help", "")
            kind = hints[f.name]
            default = f.default if f.default is not dataclasses.MISSING else None
            if default is None and f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
            origin = typing.get_origin(kind)
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            base = args[0] if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args else kind
            if base is bool:
                parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                    help=f"{help_text} (default: {default})")
            elif typing.get_origin(base) in (list, tuple):
                item = typing.get_args(base)[0] if typing.get_args(base) else str
                parser.add_argument(flag, dest=f.name, nargs="*", type=item, default=default,
                                    help=f"{help_text} (default: {default})")
            else:
                parser.add_argument(flag, dest=f.name, type=base if base in (int, float, str) else str,
                                    default=default, help=f"{help_text} (default: {default})")

    @classmethod
    def from_cli(cls, args: argparse.Namespace, defaults: argparse.Namespace,
                 smoke_test: dict[str, Any] | None = None) -> Self:
        """The config of a job's command line: `--config FILE` values, overridden by the flags given
        explicitly (those that differ from their defaults), then `smoke_test` values with `--smoke-test`."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in vars(args).items() if k in names}
        if getattr(args, "config", None):
            explicit = {k: v for k, v in values.items() if v != getattr(defaults, k, None)}
            values = {**cls.load(args.config).to_dict(), **explicit}
        if smoke_test and getattr(args, "smoke_test", False):
            values.update(smoke_test)
        return cls.from_dict(values)

    @classmethod
    def from_args(cls, namespace: argparse.Namespace) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in vars(namespace).items() if k in names}
        return cls.from_dict(values)


def field(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with a one-line help text used for CLI flags and docs."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def check_range(name: str, value: float, low: float | None = None, high: float | None = None) -> None:
    """Raise ValueError naming `name` when `value` falls outside [low, high]."""
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ValueError(f"{name} must be in {bounds}, got {value!r}")


def check_choice(name: str, value: Any, choices: typing.Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
