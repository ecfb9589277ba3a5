"""A run directory for your own Flower app.

:class:`AppRecorder` gives a Flower app of your own the run directory
fedcomp's apps write (``config.toml``, ``rounds.jsonl`` with the bytes of
both directions per client, failures, ``summary.json`` with totals,
``model.pt``), so ``fedcomp report`` compares your app's runs with each
other and with fedcomp runs::

    strategy = CompressedStrategy(FedAdam(...), model_fn=Net, uplink="surp",
                                  recorder=AppRecorder("runs/my-app-1"))
    strategy.start(grid=grid, initial_arrays=..., num_rounds=3, evaluate_fn=central_eval)

The wrapper knows the compressors, the model and the strategy; the data is
yours, so ``experiment`` describes it in fedcomp's config keys
(``{"data": {"dataset": "mnist5k"}}``) where you want reports to group
your runs with fedcomp runs of the same federation. A row's
``test_accuracy`` is what your ``evaluate_fn`` returns under
``accuracy_key`` (default: the first of ``test_accuracy``, ``accuracy``,
``acc``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import Result

from fedcomp.compressors.model.structure import structure_to_json
from fedcomp.config import ConfigError, config_from_dict
from fedcomp.flower.strategy import CompressedStrategy
from fedcomp.imports import spec_of
from fedcomp.servers.recorder import (
    APP_RUNTIME,
    RunRecorder,
    lock_run_dir,
    prepare_run_dir,
    software_versions,
)
from fedcomp.strategies import STRATEGIES

logger = logging.getLogger(__name__)

ACCURACY_KEYS = ("test_accuracy", "accuracy", "acc")
LOSS_KEYS = ("test_loss", "loss")


@dataclass
class AppRecorder:
    """Writes your Flower app's run as a fedcomp run directory (see the module docstring).

    ``run_dir``: a new or empty folder. ``experiment``: fedcomp config keys
    describing what the wrapper cannot know (``data``, ``name``, ``seed``,
    ``federation.num_clients`` if not every connected node takes part),
    merged over what it knows. ``accuracy_key`` / ``loss_key``: the keys of
    your ``evaluate_fn``'s MetricRecord for the row's ``test_accuracy`` /
    ``test_loss``.
    """

    run_dir: str | Path
    experiment: dict[str, Any] = field(default_factory=dict)
    accuracy_key: str | None = None
    loss_key: str | None = None

    def run(
        self,
        strategy: CompressedStrategy,
        start: Callable[..., Result],
        *,
        grid: Any,
        num_rounds: int,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None,
        **flower_args: Any,
    ) -> Result:
        """``start`` (Flower's round loop) with every round recorded; the run's status written however it ends."""
        cfg = self._config(strategy, grid, num_rounds)  # a ConfigError before anything runs
        path = prepare_run_dir(self.run_dir)
        with contextlib.ExitStack() as stack:
            stack.enter_context(lock_run_dir(path))
            meta = {**software_versions(), "runtime": APP_RUNTIME, "strategy": repr(strategy.inner)[:500]}
            recorder = RunRecorder(path, cfg, meta=meta)

            def recorded(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
                stats = strategy.current  # before your evaluate_fn, which may take it (take_round_stats)
                metrics = evaluate_fn(server_round, arrays) if evaluate_fn is not None else None
                if server_round > 0 and stats is not None:  # round 0 evaluates the initial model: no row
                    acc = _metric(metrics, self.accuracy_key, ACCURACY_KEYS)
                    loss = _metric(metrics, self.loss_key, LOSS_KEYS)
                    recorder.append(stats.row(test_accuracy=acc, test_loss=loss))
                return metrics

            try:
                result = start(grid=grid, num_rounds=num_rounds, evaluate_fn=recorded, **flower_args)
                final = result.arrays if len(result.arrays) else flower_args["initial_arrays"]
                arch, structure = strategy.arch, structure_to_json(strategy.structure)
                recorder.save_model(final.to_torch_state_dict(), structure, arch.input_shape, arch.num_classes)
            except BaseException as exc:  # whatever ends it, the summary says how (never "running" forever)
                recorder.finish("failed", f"{type(exc).__name__}: {exc}"[:2000])
                raise
            if recorder.rounds_aggregated() == 0:
                recorder.finish("failed", "no round aggregated an update")
            else:
                recorder.finish("complete")
            logger.info("fedcomp: run directory %s", path)
            return result

    def _config(self, strategy: CompressedStrategy, grid: Any, num_rounds: int) -> Any:
        """What the wrapper knows as a fedcomp config, with ``experiment`` merged over it; validated."""
        t = strategy.transport
        model, where = _model_name(strategy)
        known: dict[str, Any] = {
            "python_path": [where] if where else [],  # where the model's module imports from, for load_model
            "name": Path(self.run_dir).name,
            "seed": t.seed,
            "federation": {
                "num_clients": max(1, len(grid.get_node_ids())),
                "rounds": num_rounds,
                "max_abs_value": t.max_abs_value,
                "min_replies": strategy.min_replies,
            },
            "model": {"name": model},
            "uplink": {"name": t.uplink, **t.uplink_params},
            "server_compression": {"name": t.server_compression, **t.server_compression_params},
            "downlink": {"name": t.downlink, **t.downlink_params},
            "strategy": _strategy_section(strategy.inner),
        }
        data = _merged(known, self.experiment)
        with contextlib.suppress(ConfigError):
            return config_from_dict(data)
        # A hyperparameter the strategy keeps under another name or type: record the strategy by name only.
        data["strategy"] = {"name": data["strategy"]["name"], **self.experiment.get("strategy", {})}
        try:
            return config_from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"AppRecorder: the run cannot be described as a fedcomp config: {exc}") from None


def _metric(metrics: MetricRecord | None, key: str | None, defaults: tuple[str, ...]) -> float | None:
    if metrics is None:
        return None
    for k in (key,) if key else defaults:
        value = metrics.get(k)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    if key:
        raise ConfigError(f"AppRecorder: evaluate_fn returned no number under {key!r}; it returned {sorted(metrics)}")
    return None


def _model_name(strategy: CompressedStrategy) -> tuple[str, str]:
    """The model's registry name or import path, and the folder that path imports from ("" if none)."""
    arch = strategy.arch
    if arch.factory is None:
        return arch.model_name, ""
    try:
        return spec_of(arch.factory, "model_fn")
    except ConfigError as exc:  # a lambda or a local class: config.toml could not name it
        raise ConfigError(f"AppRecorder records the model by its import path: {exc}") from None


def _strategy_section(inner: Any) -> dict[str, Any]:
    """``[strategy]``: the registry name of the inner strategy's class and its hyperparameters as set."""
    for name in STRATEGIES:
        entry = STRATEGIES.get(name)
        if entry.class_name == type(inner).__name__:
            params = {}
            for key, default in entry.params().items():
                value = getattr(inner, key, None)
                if isinstance(value, (bool, int, float, str)) and (
                    default is None or type(value) is type(default) or isinstance(default, type(value))
                ):
                    params[key] = value
            return {"name": name, **params}
    return {"name": f"{type(inner).__module__}:{type(inner).__qualname__}"}


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
