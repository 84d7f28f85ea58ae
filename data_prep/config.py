"""Typed, frozen, validated configs: the base every stage's config derives from.

``FrozenConfig.from_dict`` refuses unknown keys (naming the close match) and wrong types, and every
config round-trips through plain JSON so it can live in checkpoint and store attrs.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from typing import Any, TypeVar

from .errors import UserError

T = TypeVar("T", bound="FrozenConfig")


class ConfigError(UserError, ValueError):
    """A config key or value is wrong; the message names the key and the fix."""


def _coerce(name: str, tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}{name}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}{name}={value!r} is not allowed: choose one of {list(args)}")
        return value
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}{name} must be a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(name, args[0], v, where) for v in value)
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}{name} needs {len(args)} values, got {list(value)}")
            return tuple(_coerce(name, a, v, where) for a, v in zip(args, value))
        return tuple(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}{name} must be a mapping, got {value!r}")
        return dict(value)
    if isinstance(tp, type) and issubclass(tp, FrozenConfig):
        return value if isinstance(value, tp) else tp.from_dict(value, where=f"{where}{name}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}{name} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}{name} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}{name} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}{name} must be a string, got {value!r}")
        return value
    return value


@dataclasses.dataclass(frozen=True)
class FrozenConfig:
    """Base of all configs. Subclasses are ``@dataclass(frozen=True)`` and may define ``validate``."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(f.name, hints[f.name], getattr(self, f.name), f"{type(self).__name__}.")
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:  # overridden by subclasses
        """Raise :class:`ConfigError` naming the key and the fix when values are inconsistent."""

    @classmethod
    def from_dict(cls: type[T], data: dict | None, where: str = "") -> T:
        data = dict(data or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, names, n=1)
                hints.append(f"{where}{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(
                f"unknown {cls.__name__} key(s): {', '.join(hints)}; valid keys: {', '.join(names)}"
            )
        return cls(**data)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, FrozenConfig):
                v = v.to_dict()
            elif isinstance(v, tuple):  # of values or of configs (e.g. a stage config's ``extra``)
                v = [x.to_dict() if isinstance(x, FrozenConfig) else x for x in v]
            out[f.name] = v
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self: T, **changes) -> T:
        return type(self).from_dict({**self.to_dict(), **changes})

    def hash(self) -> str:
        """Short stable hash of the config's JSON (recorded in checkpoints and ONNX cards)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]


def require(cond: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``cond``."""
    if not cond:
        raise ConfigError(message)
