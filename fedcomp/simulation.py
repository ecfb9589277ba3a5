"""Run an experiment through Flower's simulation engine (Ray backend).

This is the only module that calls the engine, so a move to ``flwr run``
touches nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcomp import engine, polling
from fedcomp.config import (
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    load_config,
    load_config_unchecked,
    validate_config,
)
from fedcomp.errors import RunFailedError, RunInterruptedError
from fedcomp.flower.state import drop_rounds_after
from fedcomp.imports import exactly, import_paths_of, only_allowed
from fedcomp.preflight import check_experiment
from fedcomp.servers.recorder import (
    CLIENT_STATE_DIR,
    CONFIG_FILE,
    MODEL_FILE,
    TRUST_CODE_HOW,
    Checkpoint,
    RunRecorder,
    check_resumable,
    keep_rounds_up_to,
    load_checkpoint,
    lock_run_dir,
    missing_rounds,
    new_run_dir,
    prepare_run_dir,
    read_rounds,
    settle_finished_run,
    software_versions,
)
from fedcomp.servers.stopping import ctrl_c_stops

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """Where a run wrote its files, and its rows as recorded there."""

    run_dir: Path
    rows: list[dict[str, Any]]
    total_s: float
    """Whole call: engine start, rounds, engine shutdown."""

    @property
    def final_accuracy(self) -> float | None:
        accs = [r["test_accuracy"] for r in self.rows if r["test_accuracy"] is not None]
        return accs[-1] if accs else None

    @property
    def uplink_bytes(self) -> int:
        return sum(r["uplink_bytes"] for r in self.rows)

    @property
    def downlink_bytes(self) -> int:
        return sum(r["downlink_bytes"] for r in self.rows)


def as_config(config: ExperimentConfig | dict[str, Any] | str | Path) -> ExperimentConfig:
    if isinstance(config, ExperimentConfig):
        return validate_config(config)
    if isinstance(config, dict):
        return config_from_dict(config)
    return load_config(config)


ENGINE_LOG_FILE = "engine.log"


DEPRECATIONS_SHOWN: set[str] = set()
"""Flower's deprecation warnings already passed on in this process (a sweep's runs say each once)."""


class _DeprecationsToConsole(logging.Handler):
    """Flower's deprecation warnings reach the console as fedcomp warnings, once each per process.

    Flower 1.42 marks ``run_simulation``, which fedcomp calls, as deprecated;
    a user should see that, not find it only in ``engine.log``.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        text = " ".join(record.getMessage().split())
        if "deprecated" in text.lower() and text not in DEPRECATIONS_SHOWN:
            DEPRECATIONS_SHOWN.add(text)
            logger.warning("Flower says: %s", text)


@contextlib.contextmanager
def _engine_log(run_dir: Path, verbose: bool) -> Iterator[None]:
    """Flower's log, client tracebacks included, goes to ``engine.log`` in the run directory.

    The console gets fedcomp's own lines (one per failed client, from the
    strategy) instead of one Ray traceback per failure, plus Flower's
    deprecation warnings; ``verbose`` keeps Flower's console output as well.
    """
    flwr_logger = logging.getLogger("flwr")
    old_level, old_handlers, old_propagate = flwr_logger.level, list(flwr_logger.handlers), flwr_logger.propagate
    handler = logging.FileHandler(run_dir / ENGINE_LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if not verbose:
        for h in old_handlers:
            flwr_logger.removeHandler(h)
        flwr_logger.propagate = False  # nor through the root logger's console handler (the CLI's basicConfig)
    flwr_logger.addHandler(handler)
    deprecations = _DeprecationsToConsole()
    if not verbose:  # verbose keeps Flower's console handler, which shows them already
        flwr_logger.addHandler(deprecations)
    flwr_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        flwr_logger.removeHandler(handler)
        flwr_logger.removeHandler(deprecations)
        handler.close()
        for h in old_handlers:
            if h not in flwr_logger.handlers:
                flwr_logger.addHandler(h)
        flwr_logger.setLevel(old_level)
        flwr_logger.propagate = old_propagate


def _secure_local_ray() -> None:
    """Token authentication for the Ray fedcomp starts, unless the user configured Ray's own.

    Ray 2.55 binds its gRPC servers (GCS, raylet, workers) on every
    interface and offers no option to bind them to loopback; with a token
    (``RAY_AUTH_MODE=token``, a random ``RAY_AUTH_TOKEN`` per process, passed
    to the processes Ray starts through their environment) a program on
    another host that reaches those ports is refused. Ray reads the mode
    when it is first imported, so this must run before that; if Ray was
    imported earlier without a token, the run goes on unauthenticated,
    with a warning.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    if "ray" in sys.modules:
        logger.warning("ray was imported before fedcomp started it: the local Ray runs without token authentication")
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def backend_config(cfg: ExperimentConfig, verbose: bool = False) -> dict[str, Any]:
    """Flower's Ray backend settings: client resources and ray.init arguments."""
    sim = cfg.simulation
    init_args: dict[str, Any] = {"logging_level": logging.INFO if verbose else logging.ERROR, "log_to_driver": verbose}
    if sim.ray_address:
        init_args["address"] = sim.ray_address
    else:
        # "local": a Ray of our own even when `ray start` left a cluster running on this machine
        # (ray.init() would join that one and refuse num_cpus).
        init_args["address"] = "local"
        init_args["num_cpus"] = os.cpu_count() or 1
        init_args["include_dashboard"] = False
        init_args["_node_ip_address"] = "127.0.0.1"  # the addresses Ray's processes use to reach each other
    return {
        "client_resources": {"num_cpus": sim.num_cpus, "num_gpus": sim.num_gpus},
        "init_args": init_args,
    }


def run(
    config: ExperimentConfig | dict[str, Any] | str | Path,
    *,
    run_dir: str | Path | None = None,
    progress: bool = True,
    verbose: bool = False,
    label: str | None = None,
) -> RunResult:
    """Run one experiment end to end and return its recorded rows.

    ``config`` is an :class:`ExperimentConfig`, a dict in the TOML shape, or
    a path to a TOML file. The run directory is ``run_dir`` if given, else a
    new one under ``output_dir``. ``label`` names the run on its progress bar
    (default: the config's ``name``). Inside :func:`fedcomp.shared_engine`
    the engine started by an earlier run is used again.
    """
    cfg = as_config(config)
    check_experiment(cfg)
    path = prepare_run_dir(run_dir) if run_dir is not None else new_run_dir(cfg)
    with lock_run_dir(path):
        recorder = RunRecorder(path, cfg, meta=software_versions())
        return _execute(cfg, path, recorder, None, progress, verbose, label)


def resume(run_dir: str | Path, *, progress: bool = True, verbose: bool = False, trust_code: bool = False) -> RunResult:
    """Continue a run from its last checkpoint (``fedcomp run --resume``).

    Rows of rounds after the checkpoint move to ``rounds.dropped.jsonl`` and
    those rounds are redone (the clients' state files of those rounds are
    deleted first), so every round appears once in ``rounds.jsonl``. A run
    without a checkpoint starts again from round 1; a complete run is left
    as it is (one killed after its last round is marked ``complete``).

    A run directory is data: a config naming code by import path is refused
    (:class:`~fedcomp.imports.UntrustedCodeError`) unless ``trust_code=True``,
    and an edited ``config.toml`` is refused before anything in it is imported.
    """
    path = Path(run_dir)
    if not (path / CONFIG_FILE).exists():
        raise ConfigError(f"{path} is not a fedcomp run directory (no {CONFIG_FILE}); nothing to resume")
    with lock_run_dir(path), only_allowed(None if trust_code else (), TRUST_CODE_HOW):
        check_resumable(path, load_config_unchecked(path / CONFIG_FILE))  # imports nothing
        cfg = load_config(path / CONFIG_FILE)
        rows = read_rounds(path)
        if len(rows) >= cfg.federation.rounds and (path / MODEL_FILE).exists():
            status = settle_finished_run(path)
            logger.warning(
                "%s has all %d rounds and its model (status: %s); nothing to resume", path, len(rows), status
            )
            return RunResult(path, rows, 0.0)
        check_experiment(cfg)
        start = load_checkpoint(path)
        done = start.round if start is not None else 0
        dropped = keep_rounds_up_to(path, done)
        gaps = missing_rounds(read_rounds(path), done)
        if gaps:
            logger.warning("%s: rounds %s have no intact row (their lines are in rounds.dropped.jsonl)", path, gaps)
        drop_rounds_after(path / CLIENT_STATE_DIR, done)
        logger.info("resuming %s after round %d (%d lines set aside)", path, done, dropped)
        recorder = RunRecorder(path, cfg, meta=software_versions(), resume_from=done)
        return _execute(cfg, path, recorder, start, progress, verbose)


def _execute(
    cfg: ExperimentConfig,
    path: Path,
    recorder: RunRecorder,
    start: Checkpoint | None,
    progress: bool,
    verbose: bool,
    label: str | None = None,
) -> RunResult:
    # Flower's simulation engine (Ray) and the two apps are imported by the run that needs them, not by every
    # import of this module (resume checks, sweeps that only read).
    from flwr.simulation import run_simulation

    from fedcomp.clients.app import build_client_app
    from fedcomp.servers.app import build_server_app

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if not cfg.simulation.ray_address and cfg.simulation.backend == "ray":
        _secure_local_ray()
    stop = threading.Event()
    server_app = build_server_app(
        cfg, recorder, progress, start, client_state_dir=path.resolve() / CLIENT_STATE_DIR, stop=stop, label=label
    )
    logger.info("run directory: %s", path)
    t0 = time.perf_counter()
    try:
        with (
            _engine_log(path, verbose),
            ctrl_c_stops(stop),
            engine.backend_for_run(cfg.simulation.backend),
            polling.node_polling(),
        ):
            run_simulation(
                server_app=server_app,
                # This process owns both sides: its simulated nodes may import what its config names, nothing more.
                client_app=build_client_app(allow_imports=exactly(import_paths_of(cfg))),
                num_supernodes=cfg.federation.num_clients,
                backend_config=backend_config(cfg, verbose),
                verbose_logging=verbose,
            )
    except (RunInterruptedError, KeyboardInterrupt) as exc:
        error = f"stopped by Ctrl-C after {len(recorder.rows)} of {cfg.federation.rounds} rounds"
        recorder.finish("interrupted", error)
        raise RunInterruptedError(f"{error}; continue with: fedcomp run --resume {path}") from exc
    except BaseException as exc:
        # The engine is gone (e.g. no client actor fits the resources): the ServerApp thread, which
        # is no daemon, would wait for warm-up replies for minutes and keep the process alive.
        stop.set()
        recorder.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    total = time.perf_counter() - t0
    rows = read_rounds(path)
    gaps = missing_rounds(rows, cfg.federation.rounds)
    if gaps:
        recorder.meta["missing_rounds"] = gaps
        if gaps[-1] == cfg.federation.rounds:  # the engine stopped early
            error = f"the engine stopped after {len(rows)} of {cfg.federation.rounds} rounds"
            recorder.finish("failed", error)
            raise RunFailedError(f"{error}; see {path / ENGINE_LOG_FILE}")
    done = start.round if start is not None else 0
    recorder.meta["engine_overhead_s"] = total - sum(r["wall_s"] for r in rows if r["round"] > done)
    if recorder.rounds_aggregated() == 0:
        reasons = [f["reason"] for r in rows for f in r.get("failures", [])]
        first = reasons[0] if reasons else "no client replied"
        error = f"no round aggregated an update ({len(reasons)} client failures); first: {first}"
        recorder.finish("failed", error)
        raise RunFailedError(f"{error} (details in {path / ENGINE_LOG_FILE})")
    recorder.finish("complete")
    return RunResult(path, rows, total)
