"""The command line's start: ``list`` without torch, packaged configs by name, ``init``, ``run`` with no file."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import tomllib

import pytest

from fedcomp import catalogue
from fedcomp.cli import main as cli_main
from fedcomp.config import ConfigError, load_config
from fedcomp.configs import DIR, packaged_configs
from fedcomp.servers.recorder import read_rounds
from fedcomp.simulation import DEPRECATIONS_SHOWN


def test_the_catalogue_file_is_what_the_registries_say():
    """``fedcomp list`` reads catalogue.json; regenerate it with ``python -m fedcomp.catalogue`` after a change.

    Built in a fresh process: this one has imported every test module, and some register names of their own.
    """
    probe = "from fedcomp import catalogue\nprint('SAME' if catalogue.load() == catalogue.build() else 'STALE')"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "SAME", "catalogue.json is stale: run python -m fedcomp.catalogue"


def test_list_names_every_method_with_its_parameters_under_its_name(capsys):
    assert cli_main(["list"]) == 0
    out = capsys.readouterr().out
    families = {f["title"].split(" (")[0]: f["entries"] for f in catalogue.load()["families"]}
    assert {"datasets", "models", "update compressors", "model compressors", "strategies"} <= set(families)
    for entries in families.values():
        for entry in entries:
            block = re.split(r"\n(?=  \S|\S)", out.split(f"\n  {entry['name']} ", 1)[1], maxsplit=1)[0]
            assert all(f"{k} = " in block for k, _ in entry["params"]), (entry["name"], block)
    # Each compressor's parameters are its parameter class's fields with their defaults.
    from fedcomp.compressors.update import UPDATE_COMPRESSORS

    qsgd = [[f.name, repr(f.default)] for f in dataclasses.fields(UPDATE_COMPRESSORS.get("qsgd").Params)][:2]
    assert qsgd == [["levels", "16"], ["bucket_size", "512"]] and "levels = 16, bucket_size = 512" in out
    assert "rank = 2, warm_start = True" in out and "eta = 0.1" in out.split("  fedadam ")[1].split("\n  fed")[0]
    # A model's [model.params] are its factory's keywords: the small-dense baseline's width among them.
    assert families["models"][[e["name"] for e in families["models"]].index("resnet20")]["params"] == [["width", "1.0"]]
    assert "embed = 8, hidden = 256, layers = 2" in out


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


def test_run_without_a_config_file_runs_every_default(tmp_path, capsys, caplog):
    DEPRECATIONS_SHOWN.clear()  # said once per process: earlier runs of this test process may have said it
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
    # Flower 1.42 deprecates run_simulation, which fedcomp.run calls: the user is told, not only engine.log.
    said = [r.getMessage() for r in caplog.records if r.name == "fedcomp.simulation" and r.levelname == "WARNING"]
    assert any("Flower says" in m and "run_simulation" in m and "deprecated" in m for m in said), said
