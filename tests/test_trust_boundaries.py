"""Code runs only where its owner asked (DESIGN.md, principle 10; docs/threat_model.md).

Each path that reads someone else's config or file — a run directory
(``load_model``, ``resume``), a CIFAR batch, the server's message on a
SuperNode, ``flwr run``'s run config on the SuperLink — is given code that
would create a marker file when imported or called; the marker must not
appear unless the owner allowed it. Plus the config's smaller input limits
(deep TOML, long names), impossible client resources, and a run killed
after its last round.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fedcomp
from fedcomp.config import ConfigError, config_from_dict, load_config, load_config_unchecked
from fedcomp.data.base import DatasetNotFoundError
from fedcomp.data.torchvision_sets import load_cifar10, read_cifar_batches
from fedcomp.flower.rounds import RoundRow
from fedcomp.imports import UntrustedCodeError
from fedcomp.messages import CONFIG_KEY, config_record
from fedcomp.preflight import check_experiment, check_resources
from fedcomp.servers.recorder import CorruptRunError, RunRecorder
from tests.conftest import small_config

# ----------------------------------------------------------------------------- helpers


def code_that_marks(folder: Path, module: str, marker: Path) -> str:
    """A module ``folder/module.py`` that creates ``marker`` when imported; returns its file path."""
    path = folder / f"{module}.py"
    path.write_text(
        textwrap.dedent(f"""
        import pathlib
        import torch

        pathlib.Path({str(marker)!r}).write_text("imported")


        def Net(input_shape, num_classes):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, num_classes))


        def load(**kwargs):
            raise RuntimeError("never reached in these tests")
        """)
    )
    return str(path)


def tiny_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))


def recorded_run(run_dir: Path, toml: str, *, rounds_done: int, model: dict | None = None) -> Path:
    """A run directory as a run leaves it, written without importing its config's code (nothing finished)."""
    src = run_dir.parent / f"{run_dir.name}-source.toml"
    src.write_text(toml)
    cfg = load_config_unchecked(src)  # imports nothing: the marker stays absent while the directory is built
    recorder = RunRecorder(run_dir, cfg)
    for r in range(1, rounds_done + 1):
        recorder.append(
            RoundRow(round=r, sampled_clients=2, clients=[1, 2], failed_clients=0, failures=[], train_loss=0.5,
                     test_accuracy=0.5, test_loss=1.0, uplink_bytes=10, uplink_bytes_per_client=[5, 5],
                     uplink_bytes_sent_per_client=[5, 5], downlink_bytes=10, downlink_bytes_per_client=5, wall_s=0.1)
        )  # fmt: skip
    if model is not None:
        recorder.save_model(model, [], (1, 28, 28), 10)
    return run_dir


def shipping_run(tmp_path: Path) -> tuple[Path, Path, Path, dict]:
    """A complete run directory whose config names ``helper.py:Net`` shipped inside it, and puts the directory
    on ``python_path`` next to a module that shadows nothing yet. Returns (run_dir, marker, shadow marker, state)."""
    run_dir = tmp_path / "given-run"
    run_dir.mkdir()
    marker, shadow_marker = tmp_path / "helper-ran", tmp_path / "shadow-ran"
    helper = code_that_marks(run_dir, "helper", marker)
    code_that_marks(run_dir, "fc_shadow_probe", shadow_marker)
    torch.manual_seed(0)
    state = tiny_net().state_dict()
    toml = (
        f'name = "given"\npython_path = [{str(run_dir)!r}]\n[model]\nname = "{helper}:Net"\n[federation]\nrounds = 1\n'
    )
    recorded_run(run_dir, toml, rounds_done=1, model=state)
    return run_dir, marker, shadow_marker, state


# ----------------------------------------------------------------------------- run directories


def test_load_model_refuses_code_shipped_in_a_run_directory_and_leaves_sys_path_alone(tmp_path):
    run_dir, marker, shadow_marker, state = shipping_run(tmp_path)
    path_before = list(sys.path)
    with pytest.raises(UntrustedCodeError, match=r"'model.name'.*trust_code=True \(command line: --trust-code\)"):
        fedcomp.load_model(run_dir)
    assert not marker.exists() and sys.path == path_before
    import importlib.util

    assert importlib.util.find_spec("fc_shadow_probe") is None  # the run directory is not importable from
    assert not shadow_marker.exists()

    model = fedcomp.load_model(run_dir, trust_code=True)  # the owner trusts it: its model is rebuilt
    assert marker.exists()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert sys.path == path_before  # python_path and the script's folder were taken off again
    assert importlib.util.find_spec("fc_shadow_probe") is None


def test_python_path_reaches_sys_path_only_while_an_allowed_path_imports(tmp_path):
    from fedcomp.imports import add_to_sys_path, only_allowed, resolve

    marker = tmp_path / "probe-ran"
    code_that_marks(tmp_path, "fc_path_probe", marker)
    with only_allowed(["fc_path_probe:*"], "test"):
        add_to_sys_path([str(tmp_path)])  # what validating a config with python_path does
        assert str(tmp_path) not in sys.path  # a folder a config names shadows no module imported meanwhile
        assert callable(resolve("fc_path_probe:Net", "model.name")) and marker.exists()
        assert str(tmp_path) in sys.path
    assert str(tmp_path) not in sys.path


def test_resume_checks_the_digest_before_importing_an_edited_config(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    recorded_run(run_dir, 'name = "plain"\n[federation]\nrounds = 2\n', rounds_done=1)
    marker = tmp_path / "helper-ran"
    helper = code_that_marks(tmp_path, "helper", marker)
    config = run_dir / "config.toml"  # someone edits in their own model after the run started
    config.write_text(config.read_text().replace('name = "lenet5_caffe"', f'name = "{helper}:Net"'))
    assert f"{helper}:Net" in config.read_text()
    with pytest.raises(ConfigError, match="was edited since the run started"):
        fedcomp.resume(run_dir, trust_code=True, progress=False)
    assert not marker.exists()


def test_resume_refuses_a_run_naming_code_unless_trusted(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    marker = tmp_path / "helper-ran"
    helper = code_that_marks(tmp_path, "helper", marker)
    recorded_run(run_dir, f'name = "own"\n[model]\nname = "{helper}:Net"\n', rounds_done=0)
    with pytest.raises(UntrustedCodeError, match="'model.name'.*--trust-code"):
        fedcomp.resume(run_dir, progress=False)
    assert not marker.exists()
    # The command line says the same, as a config error (exit status 2), and names the switch.
    done = subprocess.run([sys.executable, "-m", "fedcomp.cli", "run", "--resume", str(run_dir)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "--trust-code" in done.stderr and not marker.exists(), done.stderr


def test_a_summary_claiming_a_huge_model_is_refused_before_allocating(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    recorded_run(run_dir, 'name = "x"\n[federation]\nrounds = 1\n', rounds_done=1, model=tiny_net().state_dict())
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["num_classes"] = 10**8  # LeNet-5's last layer alone: 500 × 10⁸ floats, 200 GB
    (run_dir / "summary.json").write_text(json.dumps(summary))
    t0 = time.perf_counter()
    with pytest.raises(CorruptRunError, match="does not hold the model"):
        fedcomp.load_model(run_dir)
    assert time.perf_counter() - t0 < 10


def test_a_run_killed_after_its_last_row_is_marked_complete_by_resume(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    recorded_run(run_dir, 'name = "x"\n[federation]\nrounds = 2\n', rounds_done=2, model=tiny_net().state_dict())
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"  # killed before finish()
    result = fedcomp.resume(run_dir, progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and len(result.rows) == 2
    assert summary["input_shape"] == [1, 28, 28] and summary["rounds_completed"] == 2  # the rest kept


# ----------------------------------------------------------------------------- CIFAR batches


class _Marks:
    """Pickles as a call that creates a file (what a crafted batch would do with os.system)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"batch_label": "b", "labels": rng.integers(0, 10, n).tolist(),
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "filenames": [f"{i}.png" for i in range(n)]}  # fmt: skip


def _cifar_folder(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        raw = pickle.dumps(_batch(4, i), protocol=2)
        if i % 2:  # as the 2009 files name it (numpy 1); numpy 2 pickles say numpy._core
            raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (folder / name).write_bytes(raw)
    return folder


def test_a_crafted_cifar_batch_runs_nothing(tmp_path):
    folder = _cifar_folder(tmp_path)
    marker = tmp_path / "pickle-ran"
    (folder / "data_batch_1").write_bytes(pickle.dumps({**_batch(4, 0), "labels": _Marks(marker)}, protocol=2))
    with pytest.raises(
        DatasetNotFoundError, match=r"data_batch_1 is not a CIFAR batch file: .*io.open, which a CIFAR batch never does"
    ):
        read_cifar_batches(folder, ["data_batch_1"], "labels")
    assert not marker.exists()
    cfg = config_from_dict({"data": {"dataset": "cifar10", "data_dir": str(tmp_path)}, "model": {"name": "resnet20"}})
    with pytest.raises(ConfigError, match="data.data_dir"):  # what preflight makes of it
        check_experiment(cfg)
    assert not marker.exists()


def test_a_genuine_cifar_layout_still_loads(tmp_path):
    _cifar_folder(tmp_path)
    split = load_cifar10(str(tmp_path), False, 0, 0)
    assert tuple(split.train.images.shape) == (20, 3, 32, 32) and len(split.test) == 4
    assert torch.equal(split.test.images.reshape(4, -1), torch.from_numpy(_batch(4, 5)["data"]))


# ----------------------------------------------------------------------------- a SuperNode and the server's message


def _query(experiment: dict):
    from flwr.app import Message, MessageType, RecordDict

    return Message(content=RecordDict({CONFIG_KEY: config_record(experiment)}), message_type=MessageType.QUERY,
                   dst_node_id=7)  # fmt: skip


def _node(node_config: dict):
    from flwr.app import Context, RecordDict

    config = {"partition-id": 0, "num-partitions": 2, **node_config}
    return Context(run_id=1, node_id=7, node_config=config, state=RecordDict(), run_config={})


@pytest.mark.usefixtures("task_identity")
def test_a_supernode_without_an_allow_list_runs_nothing_the_server_names(tmp_path, monkeypatch):
    from flwr.simulation.ray_transport.ray_actor import VirtualClientEngineActor

    from fedcomp.clients.app import app

    monkeypatch.delenv("FEDCOMP_ALLOW_IMPORTS", raising=False)

    marker = tmp_path / "shell-ran"
    by_shell = {
        "federation": {"num_clients": 2},
        "data": {"dataset": "os:system", "params": {"command": f"touch {marker}"}},
    }
    with pytest.raises(UntrustedCodeError, match=r"'data.dataset'.*'os:system'.*allow-imports="):
        app(_query(by_shell), _node({}))
    assert not marker.exists()

    module_marker = tmp_path / "module-ran"
    code_that_marks(tmp_path, "fc_node_probe", module_marker)
    by_module = {"federation": {"num_clients": 2}, "python_path": [str(tmp_path)], "model": {"name": "fc_node_probe:Net"}}  # fmt: skip
    # Flower's own actor turns the refusal into the reason the server records as the client's failure.
    with pytest.raises(Exception, match=r"config key 'model.name': 'fc_node_probe:Net' names code") as failure:
        VirtualClientEngineActor().run(lambda: app, _query(by_module), "0", _node({"allow-imports": "mypkg.*"}))
    assert type(failure.value).__name__ == "ClientAppException"
    assert not module_marker.exists() and str(tmp_path) not in sys.path

    # The node's operator allows it: the same message loads the node's own model.
    reply = app(_query(by_module), _node({"allow-imports": "fc_node_probe:*, mypkg.*"}))
    assert module_marker.exists() and not reply.has_error()
    assert str(tmp_path) not in sys.path  # the server's python_path was on it only while the message ran

    env_marker = tmp_path / "env-module-ran"
    code_that_marks(tmp_path, "fc_env_probe", env_marker)
    by_env = {**by_module, "model": {"name": "fc_env_probe:Net"}}
    monkeypatch.setenv("FEDCOMP_ALLOW_IMPORTS", "fc_env_probe:*")  # or the environment its operator started it in
    assert not app(_query(by_env), _node({})).has_error() and env_marker.exists()


def test_simulated_nodes_allow_exactly_the_launching_configs_import_paths(tmp_path):
    from fedcomp.clients.app import NodeAllowList, build_client_app
    from fedcomp.imports import exactly, import_paths_of

    spec = f"{tmp_path / 'net[1].py'}:Net"
    cfg = load_config_unchecked(_toml(tmp_path, f'[model]\nname = "{spec}"\n'))
    allowed = exactly(import_paths_of(cfg))
    assert import_paths_of(cfg) == [spec]
    (mod,) = [m for m in build_client_app(allowed)._mods if isinstance(m, NodeAllowList)]
    assert mod.patterns == allowed
    from fedcomp.imports import is_allowed, only_allowed

    with only_allowed(allowed, "test"):
        assert is_allowed(spec) and not is_allowed(spec.replace("[1]", "1")) and not is_allowed("os:system")


def _toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


# ----------------------------------------------------------------------------- the SuperLink and flwr run's run config


def test_a_run_config_naming_code_is_refused_unless_the_operator_allows_it(tmp_path, monkeypatch):
    from flwr.app import Context, RecordDict

    from fedcomp.servers.deploy import main

    marker = tmp_path / "server-ran"
    code_that_marks(tmp_path, "fc_server_probe", marker)
    run_config = {"config": "deploy", "run-dir": str(tmp_path / "run"),
                  "set": f"python_path=[{str(tmp_path)!r}];data.dataset='fc_server_probe:load'"}  # fmt: skip
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    monkeypatch.delenv("FEDCOMP_ALLOW_IMPORTS", raising=False)
    with pytest.raises(UntrustedCodeError, match=r"'data.dataset'.*FEDCOMP_ALLOW_IMPORTS="):
        main(None, context)
    assert not marker.exists() and not (tmp_path / "run").exists()

    monkeypatch.setenv("FEDCOMP_ALLOW_IMPORTS", "fc_server_probe:*")  # the operator allows it
    with pytest.raises(Exception):  # noqa: B017 - past the check, the loader (and then the absent grid) fail
        main(None, context)
    assert marker.exists() and str(tmp_path) not in sys.path


# ----------------------------------------------------------------------------- impossible resources


def test_a_gpu_per_client_on_a_machine_without_one_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=r"'simulation.num_gpus'.*no GPU"):
        check_resources(config_from_dict({"simulation": {"num_gpus": 1.0}}))


def test_more_cpus_per_client_than_the_machine_has_is_a_config_error():
    with pytest.raises(ConfigError, match=r"'simulation.num_cpus': a client asks for 1e\+09 CPUs"):
        check_resources(config_from_dict({"simulation": {"num_cpus": 1e9}}))
    check_resources(config_from_dict({"simulation": {"num_cpus": float(os.cpu_count() or 1)}}))  # all of them fit


def test_an_engine_crash_ends_fedcomp_run_within_seconds(tmp_path):
    """Preflight would refuse this config; skipped, the engine crashes for real ("ActorPool is empty")."""
    config = tmp_path / "c.toml"
    config.write_text(f"output_dir = {str(tmp_path / 'runs')!r}\n[simulation]\nnum_cpus = 1e9\n")
    script = ("import sys, fedcomp.simulation as s; s.check_experiment = lambda cfg: None; "
              "from fedcomp.cli import main; sys.exit(main(sys.argv[1:]))")  # fmt: skip
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script, "run", str(config), "--no-progress"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    took = time.monotonic() - t0
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert done.returncode != 0 and summary["status"] == "failed", done.stderr[-2000:]
    assert took < 90, f"fedcomp run took {took:.0f} s to exit after the engine crashed"


# ----------------------------------------------------------------------------- input limits


def test_a_deeply_nested_toml_is_a_config_error(tmp_path):
    deep = _toml(tmp_path, "x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(deep)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    recorded_run(run_dir, 'name = "x"\n', rounds_done=1, model=tiny_net().state_dict())
    (run_dir / "config.toml").write_text(deep.read_text())
    with pytest.raises(ConfigError, match="nested too deeply"):
        fedcomp.load_model(run_dir)
    with pytest.raises(ConfigError, match="nested too deeply"):
        fedcomp.resume(run_dir, progress=False)


def test_a_name_too_long_for_a_folder_is_a_config_error_and_is_not_echoed_whole(tmp_path):
    with pytest.raises(ConfigError, match=r"'name': expected a name of at most 200 bytes") as err:
        config_from_dict(small_config(tmp_path, name="n" * 300))
    assert len(str(err.value)) < 400
    with pytest.raises(ConfigError, match=r"\(20000000 characters\)") as err:
        config_from_dict({"name": "/" * 20_000_000})
    assert len(str(err.value)) < 400
    config_from_dict(small_config(tmp_path, name="é" * 100))  # 200 bytes: fits
