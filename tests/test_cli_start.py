"""The command line's start: ``list`` without torch, packaged configs by name, ``init``, ``run`` with no file."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from fedcomp import catalogue
from fedcomp.cli import main as cli_main
from fedcomp.config import ConfigError, load_config
from fedcomp.configs import DIR, packaged_configs
from fedcomp.servers.recorder import read_rounds


def test_the_catalogue_file_is_what_the_registries_say():
    """``fedcomp list`` reads catalogue.json; regenerate it with ``python -m fedcomp.catalogue`` after a change."""
    assert catalogue.load() == catalogue.build(), "catalogue.json is stale: run python -m fedcomp.catalogue"


def test_help_and_list_import_neither_torch_nor_flower():
    probe = (
        "import sys\nfrom fedcomp.cli import main\n"
        "for argv in (['list'], ['--help'], ['run', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "heavy = sorted(m for m in ('torch', 'flwr', 'ray', 'matplotlib', 'numpy') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "HEAVY []" in out, out[-500:]
    assert "  surp " in out and "  fedadam " in out and "  demo " in out


def test_list_shows_whole_descriptions_and_every_packaged_config(capsys):
    assert cli_main(["list"]) == 0
    out = capsys.readouterr().out
    # Descriptions are whole sentences, wrapped: ALDS's used to stop at "trained on".
    assert "automatic ranks; the federation trains the factors on" in out.replace("\n" + " " * 19, " ")
    assert max(len(line) for line in out.splitlines()) <= 100
    for config in packaged_configs():
        assert f"  {config.name:<16} {config.description[:40]}" in out


def test_a_packaged_config_loads_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("demo").name == "demo"
    (tmp_path / "demo").write_text('name = "mine"\n')  # a file of that name wins: a path is never shadowed
    assert load_config("demo").name == "mine"
    with pytest.raises(ConfigError, match=r"no config file 'dmeo' and no packaged config.*demo, deploy"):
        load_config("dmeo")
    with pytest.raises(ConfigError, match=r"cannot read config file missing\.toml"):
        load_config("missing.toml")


def test_init_copies_a_packaged_config_and_never_overwrites(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["init", "demo"]) == 0
    assert (tmp_path / "demo.toml").read_bytes() == (DIR / "demo.toml").read_bytes()
    assert cli_main(["init", "demo"]) == 2
    assert "demo.toml exists" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    assert cli_main(["init", "lc_lenet5", "mine"]) == 0
    assert tomllib.loads((tmp_path / "mine" / "lc_lenet5.toml").read_text())["server_compression"]["name"] == "lc"
    assert cli_main(["init", "nosuch"]) == 2
    assert "packaged: alds_lenet5" in capsys.readouterr().err


def test_run_without_a_config_file_runs_every_default(tmp_path, capsys):
    tiny = ["federation.num_clients=2", "federation.rounds=1", "client.local_steps=2", f'output_dir="{tmp_path}"']
    assert cli_main(["run", "--no-progress", *(arg for kv in tiny for arg in ("--set", kv))]) == 0
    (run_dir,) = tmp_path.iterdir()
    recorded = tomllib.loads((run_dir / "config.toml").read_text())
    assert (recorded["data"]["dataset"], recorded["model"]["name"], recorded["uplink"]["name"]) == (
        "mnist5k",
        "lenet5_caffe",
        "identity",
    )
    assert [r["round"] for r in read_rounds(run_dir)] == [1]
    assert f"run directory: {run_dir}" in capsys.readouterr().out
