"""fedcomp's Flower ClientApp: its training function plus the compression mod.

The transport is :class:`fedcomp.flower.CompressionMod`'s, the same a
Flower user adds to their own app: it decodes the broadcast into the
ArrayRecord :func:`train` reads, and compresses the model :func:`train`
returns. Injected faults that act on the wire (flipped bytes, lying
metrics, hostile payloads) are :func:`fedcomp.clients.faults.wire_faults_mod`,
outside it. One ClientApp serves simulation and deployment alike:
everything it needs comes in the message (the experiment configuration)
and the node config (``partition-id``, ``num-partitions``).

The message is the server's word, not the node owner's: an import path in
its configuration (a model, a loader, a train function) is resolved only if
it matches the node's own allow-list, node config ``allow-imports``
(comma-separated ``fnmatch`` patterns, e.g. ``"mypkg.*,/opt/fl/net.py:Net"``)
or the ``FEDCOMP_ALLOW_IMPORTS`` environment variable of the node's process;
registry names always work. Anything else is refused before it is imported,
and the refusal is the client's failure the server records
(:class:`NodeAllowList`; docs/threat_model.md). In simulation the launching
process owns both sides: :func:`fedcomp.simulation.run` builds the app with
exactly its config's import paths allowed.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedcomp.clients.faults import UPDATE_ATTACKS, attack_of, wire_faults_mod
from fedcomp.clients.runtime import ClientRuntime, runtime_for
from fedcomp.clients.training import (
    TrainStats,
    evaluate,
    evaluate_metric,
    loss_fn,
    metric_key,
    model_delta,
    scheduled,
    train_local,
)
from fedcomp.coding import DecodeError, check_all_values
from fedcomp.compressors.model.base import ProximalTerm
from fedcomp.flower import recalibration
from fedcomp.flower.mod import CompressionMod, received_loss_term, received_model
from fedcomp.flower.settings import settings_mod
from fedcomp.imports import ALLOW_IMPORTS_ENV, only_allowed, parse_patterns, resolve
from fedcomp.messages import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY
from fedcomp.models import initial_model
from fedcomp.seeding import FAULTS, STATISTICS_SAMPLE, TRAIN_SHUFFLE, numpy_rng, torch_generator

logger = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """Raised on purpose by ``faults.client_raise_rate``."""


class TrainingDivergedError(RuntimeError):
    """Local training produced a non-finite update: nothing worth sending (and no codec should see it)."""


def check_trained(trained: dict[str, torch.Tensor], loss: float) -> None:
    """Refuse to send a trained model with NaN or inf in it (a learning rate far too large, say).

    The received model is finite (the mod checked it), so its update is finite exactly when the trained
    model is. The same one-pass check the receiver runs on decoded tensors (:func:`fedcomp.coding.check_all_values`).
    """
    try:
        check_all_values([(k, v) for k, v in trained.items() if v.is_floating_point()])
    except DecodeError as exc:
        raise TrainingDivergedError(f"local training diverged (loss {loss:.3g}): {exc}; lower client.lr") from None


def run_train_fn(
    rt: ClientRuntime,
    model: torch.nn.Module,
    cfg: Any,
    generator: torch.Generator,
    loss_term: Any,
    server_round: int,
) -> tuple[TrainStats, dict[str, float]]:
    """fedcomp's training loop, or the user's ``client.train_fn``; its extra metrics go into the row.

    A ``train_fn`` is called as ``train_fn(model, data, config, device=, generator=, loss_term=, loss=,
    server_round=)`` and returns a dict of float metrics, ``train_loss`` among them.
    """
    loss = loss_fn(cfg.loss, rt.split.is_classification)
    if not cfg.train_fn:
        return train_local(model, rt.data, cfg, generator, rt.device, loss_term=loss_term, loss=loss), {}
    fn = resolve(cfg.train_fn, "client.train_fn")
    out = fn(model, rt.data, cfg, device=rt.device, generator=generator, loss_term=loss_term, loss=loss,
             server_round=server_round)  # fmt: skip
    if not isinstance(out, dict):
        raise TypeError(f"client.train_fn {cfg.train_fn!r} returned {type(out).__name__}, expected a dict of metrics")
    metrics = {str(k): float(v) for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if "train_loss" not in metrics:  # sent as NaN, the server would take every reply for a diverged client
        raise TypeError(f"client.train_fn {cfg.train_fn!r} must return 'train_loss' (a number) among its metrics")
    train_loss = metrics.pop("train_loss")
    steps = int(metrics.pop("local_steps", 0))
    return TrainStats(train_loss, len(rt.data), steps), metrics


ALLOW_IMPORTS_KEY = "allow-imports"
"""Node config key: the import paths this node may resolve (comma-separated fnmatch patterns)."""

NODE_HOW = (
    "a SuperNode resolves only the import paths its own node config allows: its operator starts it with "
    "--node-config \"allow-imports='mypkg.*'\" (comma-separated fnmatch patterns; see docs/threat_model.md)"
)
SIMULATION_HOW = "a simulated node allows exactly the import paths of the config that launched the simulation"


class NodeAllowList:
    """The outermost mod: everything the message asks for runs under the node owner's allow-list.

    ``patterns``: fixed by the process that builds the app (simulation: the launching config's
    import paths); None reads the node config's ``allow-imports`` and the ``FEDCOMP_ALLOW_IMPORTS``
    environment variable of the node's process (both its operator's).
    """

    def __init__(self, patterns: Sequence[str] | None = None) -> None:
        self.patterns = None if patterns is None else tuple(patterns)

    def __call__(self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        if self.patterns is None:  # the node config, and the environment the node's operator started it in
            given = f"{context.node_config.get(ALLOW_IMPORTS_KEY, '')},{os.environ.get(ALLOW_IMPORTS_ENV, '')}"
            patterns, how = parse_patterns(given), NODE_HOW
        else:
            patterns, how = self.patterns, SIMULATION_HOW
        with only_allowed(patterns, how):
            return call_next(msg, context)


def build_client_app(allow_imports: Sequence[str] | None = None) -> ClientApp:
    """fedcomp's ClientApp; ``allow_imports`` fixes its allow-list (None: each node's ``allow-imports``)."""
    # Outermost first: the allow-list covers everything after it; the settings sent by digest are put back
    # before anything reads them (:mod:`fedcomp.flower.settings`); wire faults act on what the compression mod sends.
    client_app = ClientApp(
        mods=[
            NodeAllowList(allow_imports),
            settings_mod,
            wire_faults_mod,
            CompressionMod(initial_model=seeded_initial_state),
        ]
    )
    client_app.query()(warm_up)
    client_app.query(recalibration.ACTION)(statistics)
    client_app.train()(train)
    client_app.evaluate()(evaluate_local)
    return client_app


def seeded_initial_state(msg: Message, context: Context) -> dict[str, torch.Tensor]:
    """The server's round-0 model, built here from the experiment seed (``[downlink] initial = "seed"``)."""
    rt = runtime_for(msg, context)
    return initial_model(rt.cfg, rt.split.input_shape, rt.split.num_classes).state_dict()


def warm_up(msg: Message, context: Context) -> Message:
    """Load data, partition and model once, before round 1 (see ``servers.app.warm_up``)."""
    rt = runtime_for(msg, context)
    metrics = MetricRecord({"partition-id": rt.partition_id, "num-examples": len(rt.data)})
    return Message(content=RecordDict({METRICS_KEY: metrics}), reply_to=msg)


def statistics(msg: Message, context: Context) -> Message:
    """The received model's normalization moments on this client's data (a statistics round, :mod:`.recalibration`)."""
    rt = runtime_for(msg, context)
    config = msg.content.config_records[CONFIG_KEY]
    torch.set_num_threads(max(1, int(rt.cfg.simulation.num_cpus)))
    gen = torch_generator(rt.cfg.seed, STATISTICS_SAMPLE, int(config.get("server-round", 0)), rt.partition_id)
    inputs = (x for x, _ in rt.data.batches(rt.cfg.client.batch_size, gen, rt.device))
    reply = recalibration.statistics_reply(msg, rt.arch, inputs, rt.device)
    reply.content.metric_records[METRICS_KEY]["partition-id"] = rt.partition_id
    return reply


def train(msg: Message, context: Context) -> Message:
    """One round of local training on the model the mod decoded; replies with the trained model."""
    rt = runtime_for(msg, context)
    partition_id = rt.partition_id
    cfg = rt.cfg
    config = msg.content.config_records[CONFIG_KEY]
    server_round = int(config["server-round"])
    torch.set_num_threads(max(1, int(cfg.simulation.num_cpus)))

    # Injected faults (seeded per client and round): raise, or be too slow.
    draw_raise, _, draw_delay = numpy_rng(cfg.seed, FAULTS, server_round, partition_id).random(3)
    attack = attack_of(cfg.faults, partition_id, server_round)
    if draw_raise < cfg.faults.client_raise_rate or attack == "raise":
        raise InjectedFault(f"injected fault: client {partition_id} in round {server_round}")
    if draw_delay < cfg.faults.client_delay_rate:  # a slow device or link: past the round timeout, it fails
        time.sleep(cfg.faults.client_delay_s)

    # The model as the mod decoded it: its architecture may have changed, LC may add its penalty,
    # FedProx its proximal term.
    model = received_model(msg, rt.arch).to(rt.device)
    loss_term = received_loss_term()
    mu = float(config.get("proximal-mu", 0.0))
    if mu > 0:  # centred on the received parameters
        loss_term = ProximalTerm({k: p.detach().to("cpu").clone() for k, p in model.named_parameters()}, mu)

    t0 = time.perf_counter()
    gen = torch_generator(cfg.seed, TRAIN_SHUFFLE, server_round, partition_id)
    for module in model.modules():  # layers that draw noise in training (BWCP's Gumbel masks) use the round's seed
        if hasattr(module, "generator"):
            module.generator = gen
    client_cfg = scheduled(cfg.client, server_round, cfg.federation.rounds)
    stats, extra = run_train_fn(rt, model, client_cfg, gen, loss_term, server_round)
    t_train = time.perf_counter()

    # The mod forms the update against what it decoded; only an attack needs it here.
    trained = OrderedDict((k, v.detach().to("cpu")) for k, v in model.state_dict().items())
    check_trained(trained, stats.loss)
    if attack in UPDATE_ATTACKS:  # what the client sends is the attacked update on the model it received
        received = msg.content.array_records[ARRAYS_KEY].to_torch_state_dict()
        update = model_delta(trained, received)
        UPDATE_ATTACKS[attack](update)
        for k, delta in update.items():
            trained[k] = (received[k].float() + delta).to(trained[k].dtype)
    metrics = {
        "num-examples": stats.num_examples,
        "partition-id": partition_id,
        "train_loss": stats.loss,
        "local_steps": stats.steps,
        "train_s": t_train - t0,
        **extra,
    }
    if mu > 0:
        metrics["proximal_mu"] = mu  # FedProx's term was applied (the row shows it)
    content = RecordDict({ARRAYS_KEY: ArrayRecord(trained), METRICS_KEY: MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


def evaluate_local(msg: Message, context: Context) -> Message:
    """The global model (as the mod decoded it) on this client's held-out data (``federation.evaluate_on``)."""
    rt = runtime_for(msg, context)
    if rt.local_test is None:
        raise ValueError("this client holds no evaluation data: federation.evaluate_on is 'server'")
    model = received_model(msg, rt.arch).to(rt.device)
    loss, acc = evaluate(model, rt.local_test, rt.device, loss=loss_fn(rt.cfg.client.loss, rt.split.is_classification))
    metrics = {"num-examples": len(rt.local_test), "test_loss": loss}
    if acc is not None:
        metrics["test_accuracy"] = acc
    if rt.cfg.client.eval_metric:
        fn = resolve(rt.cfg.client.eval_metric, "client.eval_metric")
        metrics[metric_key(fn)] = evaluate_metric(model, rt.local_test, rt.device, fn)
    return Message(content=RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=msg)


app = build_client_app()
"""What a SuperNode runs (``[tool.flwr.app.components] clientapp``): each node's own ``allow-imports``."""
