"""Templates users copy: ``fedcomp init --flower-app DIR`` writes the Flower app in ``flower_app/``.

The template is ``examples/flower_app`` (a link to this folder in the
repository): a Flower app in the layout of Flower's quickstarts, with
fedcomp's mod and wrapper added, that runs offline on the embedded digits.
``flwr new`` needs the internet; this does not.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fedcomp.params import ConfigError

FLOWER_APP = Path(__file__).parent / "flower_app"


def copy_flower_app(dest: str | Path) -> Path:
    """Copy the Flower app template to ``dest`` (a new or empty folder); ConfigError if it holds anything."""
    out = Path(dest)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; give a new one (nothing was written)")
    shutil.copytree(FLOWER_APP, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
    return out
