"""A round's row, and a run directory for your own Flower app.

:func:`round_row` turns what the wrapper counted in one round
(:class:`~fedcomp.flower.strategy.RoundStats`) into the row of
``rounds.jsonl`` (:class:`~fedcomp.servers.recorder.RoundRow`): fedcomp's
own ServerApp and :class:`AppRecorder` write rows through it, so a row
means the same wherever it was written.

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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, MetricRecord

from fedcomp.compressors.model.structure import structure_to_json
from fedcomp.config import ConfigError, config_from_dict
from fedcomp.imports import spec_of
from fedcomp.servers.recorder import (
    APP_RUNTIME,
    RoundRow,
    RunRecorder,
    lock_run_dir,
    prepare_run_dir,
    software_versions,
)
from fedcomp.strategies import STRATEGIES

if TYPE_CHECKING:  # the wrapper imports this module: only its type is needed here
    from flwr.serverapp.strategy import Result

    from fedcomp.flower.strategy import CompressedStrategy, RoundStats

logger = logging.getLogger(__name__)

ACCURACY_KEYS = ("test_accuracy", "accuracy", "acc")
LOSS_KEYS = ("test_loss", "loss")


def round_row(
    stats: RoundStats,
    *,
    test_accuracy: float | None = None,
    test_loss: float | None = None,
    server_metrics: dict[str, float] | None = None,
) -> RoundRow:
    """The row of ``rounds.jsonl`` for one round the wrapper counted (bytes, clients, failures, metrics)."""
    return RoundRow(
        round=stats.round,
        sampled_clients=len(stats.sampled_nodes),
        clients=stats.clients,
        failed_clients=len(stats.failures),
        failures=[{"node_id": f.node_id, "reason": f.reason, "uplink_bytes": f.uplink_bytes} for f in stats.failures],
        train_loss=stats.train_loss,
        test_accuracy=test_accuracy,
        test_loss=test_loss,
        uplink_bytes=stats.uplink_bytes_total,
        uplink_bytes_per_client=stats.uplink_bytes,
        uplink_bytes_sent_per_client=stats.uplink_bytes_sent,
        downlink_bytes=stats.downlink_bytes,
        downlink_bytes_per_client=stats.downlink_bytes_per_client,
        downlink_bytes_sent_per_client=stats.downlink_bytes_sent,
        downlink_crc32=stats.downlink_crc32,
        downlink_bytes_received_per_client=stats.downlink_bytes_received,
        server_metrics=dict(server_metrics if server_metrics is not None else stats.downlink_metrics),
        wall_s=time.perf_counter() - stats.started,
        client_metrics=stats.client_metrics,
        skipped=stats.skipped,
        federated_eval=stats.evaluate_metrics,
        statistics_downlink_bytes=stats.statistics_downlink_bytes,
        statistics_uplink_bytes=stats.statistics_uplink_bytes,
    )


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
                    recorder.append(round_row(stats, test_accuracy=acc, test_loss=loss))
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
            "server_compression": {"name": t.downlink, **t.downlink_params},
            "downlink": {"name": t.downlink_update, **t.downlink_update_params},
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
