"""The Flower ServerApp: wiring, centralized evaluation, run recording.

The round loop is Flower's own (``Strategy.start``); fedcomp hooks in
through the strategy (payloads, bytes) and through ``evaluate_fn``, which
runs once at the end of every round (``end_of_round`` in :func:`serve`,
top to bottom): the wrapper closes the round and returns what it counted
(:meth:`~fedcomp.flower.strategy.CompressedStrategy.close_round`), the
server evaluates the global model on its test set when due, the round's
row (:class:`~fedcomp.flower.rounds.RoundRow`) is appended to the run
directory, so it is on disk as soon as its round is over, and the
checkpoint is saved.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from tqdm.auto import tqdm

from fedcomp.clients.training import evaluate, evaluate_metric, loss_fn, metric_key, resolve_device
from fedcomp.compressors.model.base import Snapshot
from fedcomp.compressors.model.structure import Architecture, Structure, structure_to_json
from fedcomp.config import ExperimentConfig
from fedcomp.data import SplitData, client_sizes, experiment_partitions, load_experiment_data
from fedcomp.data.experiment import local_split  # the very split each client makes
from fedcomp.errors import RunFailedError
from fedcomp.flower.rounds import ClientFailure
from fedcomp.flower.strategy import CompressedStrategy
from fedcomp.imports import resolve
from fedcomp.messages import CONFIG_KEY, METRICS_KEY, STATE_DIR_KEY, config_record
from fedcomp.models import initial_model
from fedcomp.network import NetworkModel
from fedcomp.polling import quicker_pulls
from fedcomp.servers.recorder import Checkpoint, RunRecorder
from fedcomp.servers.stopping import StoppableGrid
from fedcomp.strategies import build_strategy
from fedcomp.strategies.influence import NormBound
from fedcomp.strategies.replies import ReplyRejected, clean_reason
from fedcomp.strategies.sampling import SeededSampler

logger = logging.getLogger(__name__)


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"  # pragma: no cover


WARMUP_TIMEOUT_S = 600.0


def evaluation_due(cfg: ExperimentConfig, server_round: int) -> bool:
    """``federation.evaluate_every`` (0 = the last round only); the last round always."""
    every = cfg.federation.evaluate_every
    return bool(every and server_round % every == 0) or server_round == cfg.federation.rounds


def norm_bound(cfg: ExperimentConfig) -> NormBound | None:
    """``federation.update_norm_bound`` and its two limits, or None when off."""
    fed = cfg.federation
    if fed.update_norm_bound == "off":
        return None
    return NormBound(fed.update_norm_bound, factor=fed.update_norm_factor, max_norm=fed.update_norm_max)


def partition_sizes(cfg: ExperimentConfig, split: SplitData) -> tuple[dict[int, int], dict[int, int]]:
    """Partition → the examples its client trains on, and → its held-out share; both empty when the data is on
    each node (``data.per_node``: the server cannot know). The clients' own computation, repeated here, so a
    client's claimed weight is checked against the server's knowledge instead of its word."""
    if cfg.data.per_node:
        return {}, {}
    parts = experiment_partitions(cfg, split.train.labels.numpy(), split.partitions)
    train: dict[int, int] = {}
    test: dict[int, int] = {}
    for partition, mine in enumerate(parts):
        kept, held = local_split(cfg, split, partition, mine)
        train[partition] = len(kept)
        if held is not None:
            test[partition] = len(held)
    return train, test


def compressed_strategy(cfg: ExperimentConfig, arch: Architecture) -> CompressedStrategy:
    """The configured Flower strategy inside fedcomp's transport, with fedcomp's seeded sampling."""
    fed = cfg.federation
    sampler = SeededSampler(
        num_clients=fed.num_clients, fraction=fed.fraction_train, min_nodes=fed.min_train_clients, seed=cfg.seed
    )
    strategy = CompressedStrategy(
        build_strategy(cfg),
        arch=arch,
        uplink=cfg.uplink.name,
        uplink_params=cfg.uplink.params,
        server_compression=cfg.server_compression.name,
        server_compression_params=cfg.server_compression.params,
        downlink=cfg.downlink.name,
        downlink_params=cfg.downlink.params,
        clients_build_initial_model=cfg.downlink.initial == "seed",
        seed=cfg.seed,
        max_abs_value=fed.max_abs_value,
        min_replies=fed.quorum,
        max_examples=fed.max_examples,
        num_partitions=fed.num_clients,
        sampler=sampler,
        evaluate_rounds=lambda r: evaluation_due(cfg, r),
        round_timeout_s=fed.round_timeout_s,
        update_norm_bound=norm_bound(cfg),
        network=NetworkModel.from_config(cfg.network),
    )
    strategy.roster = sampler.roster  # one roster: sampling orders by it, replies are judged against it
    return strategy


def warm_up(grid: Grid, cfg: ExperimentConfig, strategy: CompressedStrategy) -> float:
    """Have every node load its data and model before round 1; returns seconds taken.

    The first message to a simulated client also starts its worker process
    and imports torch; without this, that fixed cost would be billed to
    round 1's wall time. Each reply tells the partition the node holds and
    its size, which later replies are judged against (a size the server
    knows itself, :attr:`~fedcomp.strategies.replies.Roster.sizes`, wins over
    the node's word). A node that fails here may still join in round 1; its
    failure is recorded in round 1's row. If every node fails, the run stops
    with the first node's reason (:class:`RunFailedError`).
    """
    t0 = time.perf_counter()
    nodes = strategy.sampler.wait_for_nodes(grid)
    logger.info("warm-up: starting %d clients", len(nodes))
    record = RecordDict({CONFIG_KEY: config_record(cfg.to_dict())})
    messages = [Message(content=record, message_type=MessageType.QUERY, dst_node_id=n) for n in nodes]
    # Starting workers can take far longer than a round: the round timeout does not apply here.
    replies = list(grid.send_and_receive(messages, timeout=max(WARMUP_TIMEOUT_S, cfg.federation.round_timeout_s)))
    failures: list[str] = []
    for m in replies:
        node = int(m.metadata.src_node_id)
        try:
            if m.has_error():
                raise ReplyRejected(f"client error: {clean_reason(m.error.reason)}")
            if METRICS_KEY not in m.content.metric_records:
                raise ReplyRejected("warm-up reply lacks metrics")
            strategy.roster.learn(node, m.content.metric_records[METRICS_KEY], strategy.policy)
        except ReplyRejected as exc:
            failures.append(f"node {node}: {exc.reason}")
            strategy.pending_failures.append(ClientFailure(node, f"warm-up: {exc.reason}"))
    answered = {int(m.metadata.src_node_id) for m in replies}
    for n in nodes:
        if n not in answered:
            failures.append(f"node {n}: no warm-up reply within the timeout")
            strategy.pending_failures.append(ClientFailure(n, "warm-up: no reply within the timeout"))
    ready = len(strategy.roster.partition_of)
    if failures:
        logger.warning("warm-up: %d of %d clients failed; first: %s", len(failures), len(nodes), failures[0])
    if ready == 0:
        raise RunFailedError(f"every client failed at warm-up ({len(failures)} of {len(nodes)}); first: {failures[0]}")
    logger.info("warm-up: %d of %d clients ready", ready, len(nodes))
    return time.perf_counter() - t0


def serve(
    grid: Grid,
    cfg: ExperimentConfig,
    recorder: RunRecorder,
    show_progress: bool = True,
    start: Checkpoint | None = None,
    client_state_dir: Path | None = None,
    label: str | None = None,
) -> None:
    """Run the federation for ``cfg`` on ``grid``, recording every round.

    ``label``: the progress bar's name for this run (default ``cfg.name``; a sweep gives the grid point).

    ``start``: continue after this checkpoint's round from its model.
    ``client_state_dir``: where simulated clients keep their state files
    (sent in the train config; a device's own ``state-dir`` wins).
    """
    split = load_experiment_data(cfg)
    model = initial_model(cfg, split.input_shape, split.num_classes)
    device = resolve_device(cfg.simulation.device)
    arch = Architecture.of_config(cfg, split.input_shape, split.num_classes)
    strategy = compressed_strategy(cfg, arch)
    grid = strategy.wired(grid)  # every message measured whole, the settings sent once per node
    strategy.roster.sizes, strategy.roster.test_sizes = partition_sizes(cfg, split)
    if strategy.roster.sizes:  # how unequal the clients are: the report prints it beside the partition
        recorder.meta["client_sizes"] = client_sizes([range(n) for n in strategy.roster.sizes.values()])
    rounds = cfg.federation.rounds
    eval_models: dict[Structure, torch.nn.Module] = {}
    loss = loss_fn(cfg.client.loss, split.is_classification)
    metric = resolve(cfg.client.eval_metric, "client.eval_metric") if cfg.client.eval_metric else None

    def evaluate_state(state: dict[str, torch.Tensor], structure: Structure) -> tuple[float, float | None]:
        if structure not in eval_models:  # one module per architecture the run goes through
            eval_models[structure] = arch.build(structure).to(device)
        eval_models[structure].load_state_dict(state)
        return evaluate(eval_models[structure], split.test, device, loss=loss)

    done = start.round if start is not None else 0
    if start is not None:
        strategy.load_state_dict(start.server)
    strategy.round_offset = strategy.last_checkpoint = done
    latest = {"arrays": ArrayRecord(start.model if start is not None else model.state_dict())}
    bar = tqdm(
        total=rounds,
        initial=done,
        unit="round",
        desc=f"{label or cfg.name}: starting the engine and {cfg.federation.num_clients} clients",
        disable=not show_progress,
        dynamic_ncols=True,
    )
    totals: dict[str, float] = {"up": 0, "down": 0}
    last_acc: list[float] = []
    final: dict[str, Snapshot] = {}

    def end_of_round(flower_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """The end of every round, in order: the wrapper closes the round, the server evaluates, the row is
        written, the checkpoint saved, the progress bar moved."""
        if flower_round == 0:  # Flower's evaluation of the initial model: no round to end
            return None
        server_round = flower_round + done
        latest["arrays"] = arrays
        last = server_round == rounds
        evaluating = evaluation_due(cfg, server_round) and cfg.federation.evaluate_on != "clients"
        # 1. The wrapper's side: its counts, a statistics round if wanted, the model compressor's end of round.
        closed = strategy.close_round(grid, server_round, arrays, evaluate_config, last=last, evaluating=evaluating)
        if closed is None:  # pragma: no cover - Flower always trains before this hook
            return None
        stats, snapshot = closed.stats, closed.snapshot
        # 2. The server's evaluation, of the model the compressor stands for (and of the others it differs from).
        server_metrics = {**stats.server_metrics, **snapshot.metrics}
        acc = loss = None
        if evaluating:
            loss, acc = evaluate_state(snapshot.state, snapshot.structure)
            if metric is not None:  # the user's own test metric, on the model just evaluated
                evaluated = eval_models[snapshot.structure]
                server_metrics[metric_key(metric)] = evaluate_metric(evaluated, split.test, device, metric)
            if not snapshot.is_global:
                _, server_metrics["global_test_accuracy"] = evaluate_state(closed.state, strategy.structure)
            if stats.client_model is not None:  # the downlink sends the change: the clients' model R ≠ w
                _, server_metrics["client_model_accuracy"] = evaluate_state(stats.client_model, strategy.structure)
        # 3. The row.
        row = stats.row(test_accuracy=acc, test_loss=loss, server_metrics=server_metrics)
        recorder.append(row)
        if last:
            final["snapshot"] = snapshot
        # 4. The checkpoint: statistics measured for an evaluation alone are not the model training goes on from.
        ckpt = cfg.federation.checkpoint_every
        if ckpt and (server_round % ckpt == 0 or last):
            recorder.save_checkpoint(server_round, closed.state if last else closed.trained, strategy.state_dict())
            strategy.last_checkpoint = server_round
        # 5. The progress bar.
        totals["up"] += row.uplink_bytes
        totals["down"] += row.downlink_bytes
        if acc is not None:
            last_acc[:] = [acc]
        postfix = {"up": human_bytes(totals["up"]), "down": human_bytes(totals["down"])}
        if last_acc:
            postfix = {"acc": f"{last_acc[0]:.4f}", **postfix}
        if row.failed_clients:
            postfix["failed"] = row.failed_clients
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)
        return MetricRecord({"test_accuracy": acc}) if acc is not None else None

    recorder.meta["warmup_s"] = warm_up(grid, cfg, strategy)
    recorder.meta["warmup_wire_bytes"] = dict(strategy.unattributed_wire)
    # The warm-up is not a round: the bar's clock (its rate and ETA) starts now.
    bar.reset(total=rounds)
    bar.initial = bar.n = done
    bar.set_description(label or cfg.name, refresh=False)
    bar.set_postfix({"clients ready": f"{len(strategy.roster.partition_of)}/{cfg.federation.num_clients}"})
    train_config = config_record(cfg.to_dict())
    evaluate_config = config_record(cfg.to_dict())
    if client_state_dir is not None:
        train_config[STATE_DIR_KEY] = str(client_state_dir)
    try:
        strategy.start(
            grid=grid,
            initial_arrays=latest["arrays"],
            num_rounds=rounds - done,
            timeout=cfg.federation.round_timeout_s,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=end_of_round,
        )
    finally:
        bar.close()
    if "snapshot" in final:  # the model as compressed for shipping (model.pt is the same model, decoded)
        snap = final["snapshot"]
        recorder.save_model(snap.state, structure_to_json(snap.structure), split.input_shape, split.num_classes)
        if snap.payload is not None:
            recorder.save_final_payload(snap.payload)
    else:  # pragma: no cover - a run that resumes after its last round has nothing left to do
        recorder.save_model(latest["arrays"].to_torch_state_dict(), [], split.input_shape, split.num_classes)


def build_server_app(
    cfg: ExperimentConfig,
    recorder: RunRecorder,
    show_progress: bool = True,
    start: Checkpoint | None = None,
    client_state_dir: Path | None = None,
    stop: threading.Event | None = None,
    label: str | None = None,
) -> ServerApp:
    """A ServerApp bound to one experiment and its run directory (see :func:`serve`).

    ``stop``: when set, the server stops waiting for replies and raises
    :class:`~fedcomp.errors.RunInterruptedError` (Ctrl-C, :mod:`fedcomp.servers.stopping`).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        quicker_pulls(grid)
        rounds_grid = StoppableGrid(grid, stop) if stop is not None else grid
        serve(rounds_grid, cfg, recorder, show_progress, start, client_state_dir, label)

    return app
