"""Experiment configurations: TOML loading, ``--set`` overrides, and validation.

A configuration is a tree of dataclasses (:mod:`fedcomp.schema`, re-exported
here). :func:`config_from_dict` and :func:`load_config` build it and check it
whole: unknown keys, wrong types and impossible values are a
:class:`ConfigError` naming the dotted key and what was expected, and so are
names no registry knows, a compressor's parameters, a schedule past the last
round and compressors that do not go together (:func:`fedcomp.preflight.check_config`).
``--set section.key=value`` overrides are parsed with TOML's own value syntax
(``rounds=3``, ``lr=0.1``, ``name="x"``; a bare word is taken as a string).

Method sections (``[uplink]``, ``[server_compression]``, ``[strategy]``) hold ``name`` plus the
method's own parameters; those are checked by the compressor's own parameter dataclass
(see :mod:`fedcomp.compressors.update`) or against the Flower strategy's signature
(:mod:`fedcomp.strategies`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from fedcomp.configs import config_path
from fedcomp.imports import is_import_spec, spec_of
from fedcomp.params import ConfigError, build, shown
from fedcomp.schema import (
    USER_CODE_KEYS,
    ClientConfig,
    DataConfig,
    DownlinkConfig,
    ExperimentConfig,
    FaultConfig,
    FederationConfig,
    ModelConfig,
    NetworkConfig,
    ServerCompressionConfig,
    SimulationConfig,
    StrategyConfig,
    UplinkConfig,
)

__all__ = [
    "USER_CODE_KEYS",
    "ClientConfig",
    "ConfigError",
    "DataConfig",
    "DownlinkConfig",
    "ExperimentConfig",
    "FaultConfig",
    "FederationConfig",
    "ModelConfig",
    "NetworkConfig",
    "ServerCompressionConfig",
    "SimulationConfig",
    "StrategyConfig",
    "UplinkConfig",
    "apply_overrides",
    "config_from_dict",
    "dump_config",
    "load_config",
    "load_config_unchecked",
    "parse_value",
    "read_toml",
    "set_dotted",
    "user_code_as_paths",
    "validate_config",
]


# --------------------------------------------------------------------------- loading


def config_from_dict(data: dict[str, Any], base_dir: str | Path | None = None) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from nested dicts.

    Your own model, dataset loader or train function may be given as the
    object itself (turned into its import path) or as an import path; see
    :mod:`fedcomp.imports`. ``base_dir``: where the config file lives (its
    relative file paths and modules are looked for there first).
    """
    return validate_config(build(ExperimentConfig, user_code_as_paths(data, base_dir), ""))


def validate_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` if it can run, else a :class:`ConfigError` naming the key: each section's own checks
    (:meth:`ExperimentConfig.validate`), then those across families (:func:`fedcomp.preflight.check_config`:
    registered names, compressor parameters, schedules, which compressors go together)."""
    # Imported here, not above: preflight imports the registries and torch, and this module is imported by
    # ``import fedcomp`` and the command line's ``--help`` and ``list``, which must answer without them.
    from fedcomp.preflight import check_config

    cfg.validate()
    check_config(cfg)
    return cfg


def user_code_as_paths(data: dict[str, Any], base_dir: str | Path | None) -> dict[str, Any]:
    """Objects → import paths, relative script paths → absolute, and ``python_path`` filled once (then kept)."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    dirs = list(data.get("python_path") or [])
    bases = [Path(base_dir).resolve()] if base_dir is not None else []
    bases.append(Path.cwd())
    used = False
    for section, key in USER_CODE_KEYS:
        table = data.get(section)
        if not isinstance(table, dict) or key not in table:
            continue
        value = table[key]
        if callable(value):
            spec, where = spec_of(value, f"{section}.{key}")
            data[section] = {**table, key: spec}
            if where and where not in dirs:
                dirs.append(where)
            used = True
        elif is_import_spec(value):
            target, _, attr = value.rpartition(":")
            if target.endswith(".py") and not Path(target).is_absolute():
                found = next((b / target for b in bases if (b / target).is_file()), None)
                if found is not None:
                    data[section] = {**table, key: f"{found.resolve()}:{attr}"}
            used = True
    if used and not data.get("python_path"):  # filled once, in the driver; recorded with the run
        dirs += [str(b) for b in bases if str(b) not in dirs]
    if dirs:
        data["python_path"] = dirs
    return data


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load a TOML file (or a packaged config by name, ``"demo"``), apply ``key=value`` overrides, validate.

    Validation resolves the config's import paths (see :mod:`fedcomp.imports` for who allows that).
    """
    p, data = read_toml(path)
    apply_overrides(data, overrides)
    try:
        return config_from_dict(data, base_dir=p.parent)
    except RecursionError:  # a value nested deeper than tomllib's own limit, met while building
        raise ConfigError(f"{p}: a value is nested too deeply to be a config") from None


def load_config_unchecked(path: str | Path) -> ExperimentConfig:
    """The typed config of a TOML file, not validated: it imports nothing, so a run directory's
    ``config.toml`` can be compared with its recorded digest before any of its code is trusted."""
    p, data = read_toml(path)
    try:
        return build(ExperimentConfig, user_code_as_paths(data, p.parent), "")
    except RecursionError:
        raise ConfigError(f"{p}: a value is nested too deeply to be a config") from None


def read_toml(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A config file's path (a packaged config by name, too) and its TOML table; ConfigError if unreadable."""
    p = config_path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p} is not a text file (byte {exc.start} is not UTF-8): expected a TOML config") from None
    try:
        return p, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from exc
    except RecursionError:  # tomllib recurses once per nesting level: [[[[...]]]] 100k deep
        raise ConfigError(f"{p} is not a usable TOML config: its values are nested too deeply") from None


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected the form section.key=value")
        set_dotted(data, key, parse_value(raw.strip()), what=f"override {item!r}")
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any, what: str = "key") -> None:
    """``data["a"]["b"] = value`` for ``key = "a.b"``, creating sections as needed."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_value(raw: str) -> Any:
    """Parse one override value with TOML syntax; a bare word is a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
    except RecursionError:
        raise ConfigError(f"override value {shown(raw)}: nested too deeply") from None


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved configuration as TOML (loadable by :func:`load_config`)."""
    return tomli_w.dumps(cfg.to_dict())
