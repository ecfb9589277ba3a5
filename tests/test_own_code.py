"""Your own model, data and training loop, in real simulations (Ray workers import them), and their errors.

The examples under examples/ run as users run them (``python examples/x.py``:
the model or loader is defined in ``__main__``); an import path is resolved
from the config file's directory; what cannot be imported or used is a
ConfigError before the engine starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fedcomp
from fedcomp.cli import format_rounds_table
from fedcomp.clients.training import evaluate, loss_fn
from fedcomp.config import ConfigError, config_from_dict, load_config
from fedcomp.data import load_dataset, load_experiment_data
from fedcomp.imports import resolve
from fedcomp.preflight import check_experiment
from fedcomp.servers.app import initial_model
from fedcomp.servers.recorder import read_rounds
from tests.conftest import small_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, tmp_path: Path, rounds: int, *options: str) -> tuple[Path, list[dict]]:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--rounds", str(rounds), "--output-dir", str(tmp_path), *options],
        capture_output=True,
        timeout=400,
        cwd=tmp_path,  # not the repository: the example's own directory must be found without it
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if (p / "summary.json").exists()]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"
    return run_dir, read_rounds(run_dir)


def test_a_model_defined_in_the_users_script_trains_in_every_worker(tmp_path):
    # On Ray, as the example runs by default: its workers are other processes, which must find the script's model.
    run_dir, rows = run_example("own_model.py", tmp_path, rounds=3)
    cfg = load_config(run_dir / "config.toml")
    assert cfg.model.name == f"{EXAMPLES / 'own_model.py'}:TinyCNN" and cfg.model.params == {"width": 8}
    assert all(r["failed_clients"] == 0 for r in rows)
    assert rows[-1]["test_accuracy"] > 0.3  # chance is 0.1
    model = fedcomp.load_model(run_dir, trust_code=True)  # rebuilt from the recorded import path (its own code)
    assert type(model).__name__ == "TinyCNN" and model.head.in_features == 2 * 8 * 16


def test_float_tabular_data_trains_a_regression_with_its_own_loss_and_metric(tmp_path):
    run_dir, rows = run_example("tabular_regression.py", tmp_path, 3, "--backend", "in-process")
    cfg = load_config(run_dir / "config.toml")
    split = load_experiment_data(cfg)
    assert not split.is_classification and split.input_shape == (20,) and split.num_classes == 1
    assert cfg.client.loss.endswith("tabular_regression.py:squared_error")  # the script's own loss, by its path
    loss = loss_fn(cfg.client.loss, False)
    before, acc = evaluate(initial_model(cfg, split.input_shape, 1), split.test, torch.device("cpu"), loss=loss)
    assert acc is None and all(r["test_accuracy"] is None for r in rows)
    losses = [r["test_loss"] for r in rows]
    assert losses[-1] < 0.25 * before and losses == sorted(losses, reverse=True), (before, losses)
    errors = [r["server_metrics"]["test_mean_abs_error"] for r in rows]  # the script's own test metric
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0]
    # ... measured by the clients too, on their own held-out data (federation.evaluate_on = "both").
    on_clients = [r["federated_eval"]["test_mean_abs_error"] for r in rows]
    assert all(r["federated_eval"]["clients"] == 4 for r in rows) and on_clients[-1] < on_clients[0]
    table = format_rounds_table(rows)  # what `fedcomp run` prints: the test loss, as there is no accuracy
    assert "test loss" in table.splitlines()[0] and f"{losses[-1]:.4f}" in table.splitlines()[-1]


def test_a_custom_train_fn_runs_on_every_client_with_the_rounds_learning_rate(tmp_path):
    run_dir, rows = run_example("custom_training.py", tmp_path, 2, "--backend", "in-process")
    assert rows[-1]["test_accuracy"] > 0.6
    # The train function's own metrics reach the row; the cosine schedule gave round 2 a lower rate.
    assert rows[0]["client_metrics"]["lr"] == pytest.approx(0.002)
    assert rows[1]["client_metrics"]["lr"] == pytest.approx(
        0.002 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 2)).item())
    )


MODULE = """
import torch
from torch import nn

from fedcomp.clients.training import train_local
from fedcomp.data import load_dataset


def small_mlp(input_shape, num_classes, hidden=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def pre_split_digits(seed=0):
    # Three clients with 50, 100 and 150 of the embedded digits each, as if each device had its own.
    split = load_dataset("mnist5k", seed=seed)
    order = torch.randperm(len(split.train), generator=torch.Generator().manual_seed(seed))  # the set is by class
    x, y = split.train.images[order], split.train.labels[order]
    cuts = [(0, 50), (50, 150), (150, 300)]
    return {"clients": [(x[a:b], y[a:b]) for a, b in cuts], "test": (split.test.images, split.test.labels),
            "num_classes": 10}


def train_counting(model, data, config, *, device, generator, loss_term, loss, server_round):
    # fedcomp's loop, reporting how many examples this client holds.
    stats = train_local(model, data, config, generator, device, loss_term=loss_term, loss=loss)
    return {"train_loss": stats.loss, "local_steps": stats.steps, "held": float(len(data))}
"""


def test_import_paths_from_the_config_files_directory_with_data_split_per_client(tmp_path):
    """A model, a loader (data that comes split per client) and a train_fn, all in the user's module."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "mycode.py").write_text(MODULE)
    (project / "experiment.toml").write_text(
        f'name = "import-path"\noutput_dir = "{tmp_path / "runs"}"\n'
        '[data]\ndataset = "mycode:pre_split_digits"\n'
        '[model]\nname = "mycode:small_mlp"\n[model.params]\nhidden = 24\n'
        "[federation]\nnum_clients = 3\nrounds = 2\n"
        '[client]\nlocal_steps = 20\ntrain_fn = "mycode:train_counting"\n'
    )
    cfg = load_config(project / "experiment.toml")  # from the test's cwd, not project/
    assert str(project) in cfg.python_path
    result = fedcomp.run(cfg, progress=False)
    rows = result.rows
    assert all(r["failed_clients"] == 0 and sorted(r["clients"]) == [0, 1, 2] for r in rows)
    # Client metrics are example-weighted: Σ n_i·n_i / Σ n_i for the sizes 50, 100, 150 as given.
    assert rows[0]["client_metrics"]["held"] == pytest.approx((50**2 + 100**2 + 150**2) / 300)
    assert rows[-1]["test_accuracy"] > 0.3
    assert (
        fedcomp.load_model(result.run_dir, trust_code=True)[1].out_features == 24
    )  # [model.params] reached the factory
    with pytest.raises(ConfigError, match=r"federation\.num_clients.*split across 3 clients"):
        check_experiment(config_from_dict({**cfg.to_dict(), "federation": {"num_clients": 4}}))


def lambda_model():  # a module-level factory is fine; a lambda is not (workers must import it)
    return torch.nn.Linear(1, 1)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"model": {"name": "no_such_module:Net"}},
            r"model\.name.*cannot import 'no_such_module'.*ModuleNotFoundError",
        ),
        ({"model": {"name": "fedcomp.models:NoSuchNet"}}, r"model\.name.*'fedcomp\.models' has no 'NoSuchNet'"),
        ({"model": {"name": "missing_file.py:Net"}}, r"model\.name.*cannot import.*no file"),
        ({"model": {"name": lambda: torch.nn.Linear(1, 1)}}, r"model\.name.*inside a function"),
        ({"client": {"train_fn": "train_local"}}, r"client\.train_fn.*import path"),
        ({"data": {"dataset": "fedcomp.models:MODELS"}}, r"data\.dataset.*not a function"),
    ],
)
def test_what_cannot_be_imported_is_a_config_error_naming_it(config, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(config)


REGRESSOR = f"{EXAMPLES / 'tabular_regression.py'}:Regressor"


def regression_data(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 5, generator=gen)
    return {"train": (x[:150], x[:150].sum(1)), "test": (x[150:], x[150:].sum(1))}


def test_a_loader_or_model_that_does_not_fit_is_refused_before_the_engine_starts():
    here = f"{Path(__file__).resolve()}"
    for sections, message in (
        ({"data": {"partition": "dirichlet"}}, r"data\.partition.*float \(regression\) targets"),
        ({"client": {"loss": "cross_entropy"}}, r"client\.loss.*class labels"),
        ({}, r"model\.name.*does not run on \(5,\) inputs"),  # LeNet on tabular data
        # Channel-pruning compressors on a model without conv–BN layers say so, before the engine starts.
        ({"model": {"name": REGRESSOR}, "server_compression": {"name": "udfc"}}, r"UDFC found no untied conv–BN–ReLU"),
        ({"model": {"name": REGRESSOR}, "server_compression": {"name": "bwcp"}}, r"BWCP found no conv–BN layer"),
    ):
        data = {"dataset": f"{here}:regression_data", **sections.get("data", {})}
        cfg = config_from_dict({**sections, "data": data})
        with pytest.raises(ConfigError, match=message):
            check_experiment(cfg)
    assert resolve(f"{here}:lambda_model", "model.name")() is not None


def test_a_federated_dataset_from_local_files_trains_on_flowers_partitions(tmp_path):
    run_dir, rows = run_example("federated_dataset.py", tmp_path, 2, "--backend", "in-process")
    assert all(r["failed_clients"] == 0 and sorted(r["clients"]) == [0, 1, 2, 3] for r in rows)
    assert rows[-1]["test_accuracy"] > 0.7  # two balanced classes: chance is 0.5
    split = load_experiment_data(load_config(run_dir / "config.toml"))
    sizes = [len(p) for p in split.partitions]
    assert sum(sizes) == 2400 and len(set(sizes)) > 1  # Flower's Dirichlet split, as it made it


def train_without_loss(model, data, config, **kwargs) -> dict:
    return {"steps_done": 1.0}


def test_a_train_fn_must_report_its_loss():
    """Sent as NaN, a missing train_loss would make the server take every reply for a diverged client."""
    from fedcomp.clients.app import run_train_fn
    from fedcomp.clients.runtime import _runtime

    cfg = config_from_dict({"federation": {"num_clients": 3}, "client": {"train_fn": f"{Path(__file__).resolve()}:train_without_loss"}})  # fmt: skip
    rt = _runtime(json.dumps(cfg.to_dict()), 0, 3)
    with pytest.raises(TypeError, match="must return 'train_loss'"):
        run_train_fn(rt, rt.arch.build(), cfg.client, torch.Generator(), None, 1)


def tiny_mlp(input_shape, num_classes, hidden=8):  # a model function and class defined in this test module,
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(torch.tensor(input_shape).prod()), hidden),
                               torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes))  # fmt: skip


class WideMLP(torch.nn.Module):  # handed to run_sweep as they are
    def __init__(self, input_shape, num_classes, hidden=12):
        super().__init__()
        self.body = tiny_mlp(input_shape, num_classes, hidden)

    def forward(self, x):
        return self.body(x)


def first_digits(seed=0):  # a data function defined here too
    split = load_dataset("mnist5k", seed=seed)
    return {"train": (split.train.images[:900], split.train.labels[:900]),
            "test": (split.test.images[:300], split.test.labels[:300]), "num_classes": 10}  # fmt: skip


def test_run_sweep_takes_your_model_class_and_data_function_as_run_does(tmp_path):
    """docs/own_code.md: the Python API takes the model and data as they are; a sweep records them as a run does."""
    base = small_config(tmp_path, data={"dataset": first_digits}, model={"name": WideMLP})
    result = fedcomp.run_sweep(base, {"model.name": [WideMLP, tiny_mlp]}, sweep_dir=tmp_path / "sweep", progress=False)
    assert [r.status for r in result.runs] == ["complete", "complete"]
    assert [r.dir for r in result.runs] == [f"model.name={__name__}_WideMLP__seed=0",
                                            f"model.name={__name__}_tiny_mlp__seed=0"]  # fmt: skip
    single = fedcomp.run(base, progress=False)
    recorded = load_config(single.run_dir / "config.toml")
    for run, name in zip(result.runs, ("WideMLP", "tiny_mlp"), strict=True):
        cfg = load_config(result.sweep_dir / run.dir / "config.toml")
        assert cfg.data.dataset == recorded.data.dataset == f"{__name__}:first_digits"
        assert cfg.model.name == f"{__name__}:{name}" and cfg.python_path == recorded.python_path
    rows = read_rounds(result.sweep_dir / result.runs[0].dir)
    assert rows[-1]["test_accuracy"] == single.rows[-1]["test_accuracy"]  # the same run, seeded alike
