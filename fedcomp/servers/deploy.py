"""The ServerApp for Flower's deployment runtime (``flwr run . <connection>``).

The same rounds as a simulation (:func:`fedcomp.servers.app.serve`): the
SuperLink starts this app, the SuperNodes run :mod:`fedcomp.clients.app`
with their own data (node config ``partition-id`` / ``num-partitions``,
optionally ``state-dir``). The run configuration (``[tool.flwr.app.config]``
in ``pyproject.toml``, or ``flwr run --run-config``) names the experiment:

    config      the experiment TOML: absolute, relative to where the SuperLink runs,
                inside the app bundle, or a config packaged with fedcomp by name ("deploy")
    set         overrides, "key=value" separated by ";" (e.g. "uplink.name='surp';federation.rounds=3")
    run-dir     where to write the run directory ("" = a new one under the experiment's output_dir)

``federation.num_clients`` must equal the number of SuperNodes (each node's
``num-partitions``); the server waits for them before round 1.

**What it trusts.** The ``flwr run`` caller names ``config`` and ``run-dir``,
which this app reads and writes with the SuperLink's permissions: anyone who
may start runs on the SuperLink may make it read any file it can read and
create a run directory wherever it may write (never into a non-empty
folder). Run the SuperLink as an unprivileged user and restrict who can
reach its control API. The SuperNodes are not trusted: every reply is judged
(:mod:`fedcomp.strategies.replies`).

The config and its ``set`` overrides are the caller's too (the app bundle that
carries a config is uploaded by ``flwr run``), so an import path anywhere in
them — a model, loader or function of the caller's choosing, run here — is
refused before anything is imported unless it matches the SuperLink operator's
``FEDCOMP_ALLOW_IMPORTS`` (comma-separated fnmatch patterns, in the environment
of the process that runs this app). Registry names always work. See
docs/threat_model.md.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from logging import ERROR
from pathlib import Path

from flwr.app import Context
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid, ServerApp

from fedcomp.config import ConfigError, load_config
from fedcomp.errors import RunFailedError
from fedcomp.imports import ALLOW_IMPORTS_ENV, only_allowed, parse_patterns
from fedcomp.servers.app import serve
from fedcomp.servers.recorder import (
    ROUNDS_FILE,
    RunRecorder,
    lock_run_dir,
    new_run_dir,
    prepare_run_dir,
    software_versions,
)
from fedcomp.servers.stopping import StoppableGrid

logger = logging.getLogger(__name__)

app = ServerApp()

# How often the ServerApp asks the SuperLink for replies, where its grid has no interval of its own. Flower
# 1.42's deployment grid (HttpGrid) sleeps 3 s between pulls, so each send-and-receive (the warm-up, every
# round, a statistics round) waited 1.5 s on average after its last reply had arrived; a pull is one small
# request to the SuperLink's ServerAppIo API. A reply pulled while its node is still uploading it is
# completed by Flower's own object pulls (retries after 1, 2, 4, 8 s, then every 10 s), as with the 3 s
# poll, which caught such replies too. Under a simulation-mode SuperLink (flwr-simulation) this app gets
# Flower's in-memory grid, which keeps its own interval (0.1 s).
REPLY_POLL_S = 0.2


OPERATOR_HOW = (
    f"a deployed run's config comes from the flwr run caller: the SuperLink's operator allows import paths by "
    f"setting {ALLOW_IMPORTS_ENV}='mypkg.*' (comma-separated fnmatch patterns) in its environment "
    "(see docs/threat_model.md)"
)


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        with only_allowed(parse_patterns(os.environ.get(ALLOW_IMPORTS_ENV, "")), OPERATOR_HOW):
            _main(grid, context)
    except Exception as exc:
        # Said in the run's log before Flower sees it: Flower 1.42's simulation runtime hands a ServerApp's
        # exception on only when its engine did not fail too, and an engine stopped while it was starting
        # (a ServerApp that failed at once, on a busy machine) fails, so the streamed log could end with
        # "An error was encountered" and no word of the config error that caused it.
        flwr_log(ERROR, "fedcomp's ServerApp failed: %s: %s", type(exc).__name__, exc)
        raise


def _main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    config = str(rc.get("config", ""))
    if not config:
        raise ConfigError(
            "run config 'config': give the experiment TOML, e.g. flwr run --run-config 'config=\"x.toml\"'"
        )
    overrides = [s.strip() for s in str(rc.get("set", "")).split(";") if s.strip()]
    cfg = load_config(_find(config), overrides)
    run_dir = prepare_run_dir(Path(str(rc["run-dir"]))) if rc.get("run-dir") else new_run_dir(cfg)
    with lock_run_dir(run_dir):
        recorder = RunRecorder(run_dir, cfg, meta={**software_versions(), "runtime": "deployment"})
        logger.info("fedcomp: run directory %s", run_dir)
        try:
            serve(replies_polled(grid), cfg, recorder, show_progress=False)
        except BaseException as exc:
            recorder.finish("failed", f"{type(exc).__name__}: {exc}")
            raise
        if recorder.rounds_aggregated() == 0:
            recorder.finish("failed", "no round aggregated an update")
            raise RunFailedError(f"no round aggregated an update; see the failures in {run_dir / ROUNDS_FILE}")
        recorder.finish("complete")


def replies_polled(grid: Grid) -> StoppableGrid:
    """The grid the rounds use: Flower's push-then-pull loop, every REPLY_POLL_S unless the grid has its own
    interval (nothing sets the stop event here: Ctrl-C belongs to the SuperLink's processes)."""
    return StoppableGrid(grid, threading.Event(), default_poll_s=REPLY_POLL_S)


def _find(config: str) -> Path:
    """The config file as given, else the same relative path inside the installed app bundle (on sys.path)."""
    path = Path(config)
    if path.is_absolute() or path.is_file():  # a folder is no config (``deploy/`` in the repository root)
        return path
    for entry in sys.path:
        if entry and (Path(entry) / path).is_file():
            return Path(entry) / path
    return path  # load_config names it in its error
