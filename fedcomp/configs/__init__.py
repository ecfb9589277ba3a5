"""The example experiment configs shipped with fedcomp: ``fedcomp run demo``, ``fedcomp init demo``.

Each ``<name>.toml`` here is a complete experiment with comments; its first
sentence is its description in ``fedcomp list``. ``fedcomp run NAME`` runs
one as it is, ``fedcomp init NAME`` copies it to edit. A path always wins
over a name: ``fedcomp run demo.toml`` reads the file in the current folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fedcomp.params import ConfigError
from fedcomp.suggest import did_you_mean

DIR = Path(__file__).parent


@dataclass(frozen=True)
class PackagedConfig:
    name: str
    path: Path
    description: str


def _description(text: str) -> str:
    """The first sentence of the file's leading comment block."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    words = " ".join(lines)
    match = re.match(r"(.+?\.)(\s|$)", words)
    return match.group(1) if match else words


def packaged_configs() -> list[PackagedConfig]:
    return [PackagedConfig(p.stem, p, _description(p.read_text(encoding="utf-8"))) for p in sorted(DIR.glob("*.toml"))]


def packaged_config(name: str) -> Path:
    """The path of the packaged config ``name``; a ConfigError listing the names if there is none."""
    path = DIR / f"{name}.toml"
    if re.fullmatch(r"[A-Za-z0-9_]+", name) and path.is_file():
        return path
    names = [c.name for c in packaged_configs()]
    raise ConfigError(
        f"no config file {name!r} and no packaged config of that name{did_you_mean(name, names)}; "
        f"packaged: {', '.join(names)}"
    )


def config_path(arg: str | Path) -> Path:
    """A config argument as a file: an existing file as given, else a packaged config's name.

    A folder is never a config: ``deploy`` in the repository root (where the
    ``deploy/`` folder is) still names the packaged ``deploy`` config; a
    folder that names no packaged config is refused, naming both readings.
    """
    path = Path(arg)
    if path.is_dir():
        name = str(arg)
        if (DIR / f"{name}.toml").is_file() and re.fullmatch(r"[A-Za-z0-9_]+", name):
            return DIR / f"{name}.toml"
        raise ConfigError(
            f"{str(arg)[:200]!r} is a folder, not a config file, and no packaged config has that name; "
            f"give a TOML file (e.g. {str(Path(name) / 'experiment.toml')!r}) or one of: "
            f"{', '.join(c.name for c in packaged_configs())}"
        )
    if path.exists() or path.suffix == ".toml" or len(path.parts) > 1:
        return path  # a path: reading it gives the clear error if it is missing
    return packaged_config(str(arg))
