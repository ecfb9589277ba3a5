"""A user's own code by import path: ``"package.module:name"`` or ``"path/to/file.py:name"``.

Models, datasets and training functions may be the user's own. A config
names them by import path, so that every process that reads the config
(the driver, every Ray worker, a SuperNode) imports the same thing; the
Python API also takes the object itself and turns it into its path
(:func:`spec_of`), including one defined in the script being run
(``__main__``: the path is then the script's file).

Where a module is looked for: the config's ``python_path`` directories,
which the driver fills with the directory it runs in and the config file's
directory (as ``python -m`` would), then ``sys.path``. They are put on
``sys.path`` in every process that resolves a path (:func:`add_to_sys_path`),
so workers need no ``PYTHONPATH``. A file path is made absolute.

Anything that cannot be imported is an :class:`ImportSpecError` (a
ConfigError) naming the path and the import error.

**Who may run code** (docs/threat_model.md). A config is data; an import
path in it runs code when resolved. Outside any :func:`only_allowed` block
the process resolves every path: its owner wrote the config it runs (``fedcomp
run my.toml``, the Python API). Where a config comes from someone else — a run
directory (``load_model``, ``resume``), the server's message on a SuperNode,
``flwr run``'s run config on the SuperLink — the reader wraps the work in
``only_allowed(patterns, how)``: an import path that matches none of the
owner's patterns (``fnmatch``, against the whole ``"module:name"`` or
``"/abs/file.py:name"``) is an :class:`UntrustedCodeError` raised before
anything is imported, and ``python_path`` directories reach ``sys.path`` only
when an allowed path is imported, and leave it when the block ends.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import glob
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcomp.params import ConfigError
from fedcomp.schema import USER_CODE_KEYS


class ImportSpecError(ConfigError):
    """An import path that does not resolve (the message names it and why)."""


class UntrustedCodeError(ImportSpecError):
    """An import path the process's owner did not allow (the message names the key and how to allow it)."""


@dataclass
class _Allowed:
    patterns: tuple[str, ...] | None
    """fnmatch patterns an import path must match; None: every path (the owner trusts this config's code)."""
    how: str
    """What the owner does to allow a path, for the error message."""
    python_path: list[str] = field(default_factory=list)
    """The config's ``python_path``, held back until an allowed path is imported."""


_allowed: contextvars.ContextVar[_Allowed | None] = contextvars.ContextVar("fedcomp_allowed_imports", default=None)


ALLOW_IMPORTS_ENV = "FEDCOMP_ALLOW_IMPORTS"
"""Environment variable: the import paths a process's owner allows in configs it is sent (a SuperLink's
ServerApp, a SuperNode's ClientApp), as comma-separated fnmatch patterns."""


def parse_patterns(text: str) -> tuple[str, ...]:
    """``"mypkg.*, /opt/own.py:Net"`` → the patterns (comma-separated, blanks dropped)."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


def exactly(specs: Iterable[str]) -> tuple[str, ...]:
    """Patterns that match these import paths and nothing else (``*``, ``?`` and ``[`` escaped)."""
    return tuple(glob.escape(s) for s in specs)


def is_allowed(spec: str) -> bool:
    """Whether ``spec`` may be imported here (always, outside :func:`only_allowed`)."""
    scope = _allowed.get()
    return scope is None or scope.patterns is None or any(fnmatch.fnmatchcase(spec, p) for p in scope.patterns)


@contextlib.contextmanager
def only_allowed(patterns: Sequence[str] | None, how: str) -> Iterator[None]:
    """Inside the block, resolve only import paths matching ``patterns`` (None: all); restore ``sys.path`` after.

    ``how`` finishes the refusal's message: what the process's owner does to allow a path.
    Entries put on ``sys.path`` inside the block (``python_path``, a script's directory) are
    removed when it ends, so a later ``import`` never finds a module shipped with the config.
    """
    before = set(sys.path)
    token = _allowed.set(_Allowed(None if patterns is None else tuple(patterns), how))
    try:
        yield
    finally:
        _allowed.reset(token)
        sys.path[:] = [p for p in sys.path if p in before]


def current_patterns() -> tuple[str, ...] | None:
    """The patterns in force here (None: every import path); a cache of resolved objects keys on it."""
    scope = _allowed.get()
    return None if scope is None else scope.patterns


def import_paths_of(cfg: Any) -> list[str]:
    """The import paths an :class:`~fedcomp.config.ExperimentConfig` names (its user-code keys)."""
    values = (getattr(getattr(cfg, section), key) for section, key in USER_CODE_KEYS)
    return sorted({v for v in values if is_import_spec(v)})


def shown(text: str, limit: int = 120) -> str:
    """``text`` quoted for a message, cut to ``limit`` characters (a config value may be megabytes long)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def is_import_spec(name: object) -> bool:
    """``"module:attr"`` or ``"file.py:attr"`` (registry names have no colon)."""
    return isinstance(name, str) and ":" in name and not name.startswith(":")


def add_to_sys_path(dirs: Iterable[str]) -> None:
    """Put ``dirs`` at the front of ``sys.path`` (once each), so user modules import in this process.

    Inside :func:`only_allowed` they are held back until an allowed import path is resolved: a
    directory a config names could shadow any module (its own ``pandas.py``) for everything imported later.
    """
    scope = _allowed.get()
    if scope is not None:
        scope.python_path.extend(str(Path(d)) for d in dirs if d and str(Path(d)) not in scope.python_path)
        return
    _insert(dirs)


def _insert(dirs: Iterable[str]) -> None:
    for d in reversed([str(Path(d)) for d in dirs if d]):
        if d not in sys.path:
            sys.path.insert(0, d)


def resolve(spec: str, key: str) -> Any:
    """The object ``spec`` names; ImportSpecError naming ``key`` (the config key) if it does not resolve.

    :class:`UntrustedCodeError`, before anything is imported, if the process's owner did not allow it
    (:func:`only_allowed`).
    """
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ImportSpecError(
            f"config key '{key}': {shown(spec)} is not an import path 'module:name' or 'file.py:name'"
        )
    scope = _allowed.get()
    if not is_allowed(spec):
        raise UntrustedCodeError(
            f"config key '{key}': {shown(spec)} names code to import, and this process's owner did not allow it; "
            f"{scope.how if scope is not None else ''}"
        )
    if scope is not None:
        _insert(scope.python_path)  # removed again when the only_allowed block ends
    try:
        module = _load_file(Path(target)) if target.endswith(".py") else importlib.import_module(target)
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything while importing
        raise ImportSpecError(
            f"config key '{key}': cannot import {shown(target)} for {shown(spec)}: {type(exc).__name__}: {exc}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ImportSpecError(f"config key '{key}': {shown(target)} has no {shown(attr)} (from {shown(spec)})")
        obj = getattr(obj, part)
    return obj


def spec_of(obj: Any, key: str) -> tuple[str, str]:
    """The import path of a module-level function or class, and the directory to import it from."""
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module_name or not qualname:
        raise ImportSpecError(f"config key '{key}': {obj!r} is not a function or class")
    if "<locals>" in qualname or "<lambda>" in qualname:
        raise ImportSpecError(
            f"config key '{key}': {qualname} is defined inside a function; every worker process must import it, "
            "so define it at the top level of a module or script"
        )
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if module_name == "__main__" or module_name.startswith(_FILE_PREFIX):
        if not file:
            raise ImportSpecError(
                f"config key '{key}': {qualname} is defined in an interactive session; "
                "worker processes cannot import it: put it in a .py file"
            )
        path = Path(file).resolve()
        return f"{path}:{qualname}", str(path.parent)
    root = Path(file).resolve().parent if file else None
    for _ in range(module_name.count(".")):  # a package module: import from the package's parent
        root = root.parent if root is not None else None
    if file and Path(file).name == "__init__.py":  # a package: its parent holds it
        root = root.parent if root is not None else None
    return f"{module_name}:{qualname}", str(root) if root is not None else ""


def accepts(fn: Any, name: str) -> bool:
    """Whether ``fn`` (a function or class) takes a keyword argument ``name``."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


_FILE_PREFIX = "fedcomp_user_"


def _load_file(path: Path) -> Any:
    """Import a script by its path, under a name of its own: its ``if __name__ == "__main__"`` block does not run."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no file {str(path)!r}")
    name = _FILE_PREFIX + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has a loader
        raise ImportError(f"{str(path)!r} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    _insert([str(path.parent)])  # the script's own sibling imports (resolve allowed this script)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
