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
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedcomp.config import ConfigError


class ImportSpecError(ConfigError):
    """An import path that does not resolve (the message names it and why)."""


def is_import_spec(name: object) -> bool:
    """``"module:attr"`` or ``"file.py:attr"`` (registry names have no colon)."""
    return isinstance(name, str) and ":" in name and not name.startswith(":")


def add_to_sys_path(dirs: Iterable[str]) -> None:
    """Put ``dirs`` at the front of ``sys.path`` (once each), so user modules import in this process."""
    for d in reversed([str(Path(d)) for d in dirs if d]):
        if d not in sys.path:
            sys.path.insert(0, d)


def resolve(spec: str, key: str) -> Any:
    """The object ``spec`` names; ImportSpecError naming ``key`` (the config key) if it does not resolve."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ImportSpecError(f"config key '{key}': {spec!r} is not an import path 'module:name' or 'file.py:name'")
    try:
        module = _load_file(Path(target)) if target.endswith(".py") else importlib.import_module(target)
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything while importing
        raise ImportSpecError(
            f"config key '{key}': cannot import {target!r} for {spec!r}: {type(exc).__name__}: {exc}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ImportSpecError(f"config key '{key}': {target!r} has no {attr!r} (from {spec!r})")
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
    add_to_sys_path([str(path.parent)])  # the script's own sibling imports
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
