"""Typed parameters from plain dicts: the toolkit every family's parameter dataclass is built with.

:func:`build` turns a nested dict (a TOML table) into a dataclass, refusing
unknown keys, wrong types and non-finite numbers with a :class:`ConfigError`
that names the dotted key and what was expected; :func:`params_from_dict`
also runs the dataclass's own ``validate(path)``, whose checks are written
with :func:`require`.

A dataclass marks itself *open* with ``extra_keys_are_params = True`` (a
``ClassVar``): keys it does not declare are collected into its ``params``
field, for the method it names to check (``[uplink] name = "surp"`` plus
SuRP's own keys). A ``removed_keys`` mapping (a ``ClassVar``) names keys that
existed once and what to write instead.

This module imports nothing of fedcomp: the experiment schema and every
component's parameters build on it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

from fedcomp.suggest import did_you_mean


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type or an impossible value."""


def require(ok: bool, key: str, expected: str) -> None:
    """Raise a ConfigError naming ``key`` and what it should have been, unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key '{key}': expected {expected}")


def shown(text: str, limit: int = 80) -> str:
    """``text`` quoted for a message, cut to ``limit`` characters (a name may be megabytes long)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def params_from_dict(cls: type, data: dict[str, Any], path: str) -> Any:
    """Build a method's parameter dataclass (with its ``validate``) from a dict."""
    obj = build(cls, data, path)
    if hasattr(obj, "validate"):
        obj.validate(path)
    return obj


def build(cls: type, data: Any, path: str) -> Any:
    """The dataclass ``cls`` from the table ``data`` at dotted ``path``, every value coerced to its field's type."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{path}': expected a table (section), got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    is_open = getattr(cls, "extra_keys_are_params", False)
    removed: dict[str, str] = getattr(cls, "removed_keys", {})
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else key
        if is_open and (key not in names or key == "params"):
            extra[key] = value
            continue
        if key in removed:
            raise ConfigError(f"config key '{dotted}' was removed: {removed[key]}")
        if key not in names:
            raise ConfigError(
                f"unknown config key '{dotted}'{did_you_mean(key, names)}; known keys here: {sorted(names)}"
            )
        kwargs[key] = _coerce(hints[key], value, dotted)
    if is_open:
        kwargs["params"] = extra
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"config key '{path}': expected one of {list(allowed)}, got {value!r}")
        return value
    if origin in (types.UnionType, typing.Union):
        for arm in typing.get_args(tp):
            try:
                return _coerce(arm, value, path)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{path}': expected {tp}, got {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{path}': expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{path}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{path}': expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"config key '{path}': expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{path}': expected a string, got {value!r}")
        return value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}': expected a table, got {value!r}")
        return dict(value)
    if origin is tuple or origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{path}': expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return type(value)(_coerce(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    raise ConfigError(f"config key '{path}': unsupported type {tp}")  # pragma: no cover
