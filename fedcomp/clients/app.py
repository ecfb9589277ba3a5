"""The Flower ClientApp: decode the broadcast, train, compress the update.

One ClientApp serves simulation and deployment alike: everything it needs
comes in the message (the experiment configuration and the global model
payload) and the node config (``partition-id``, ``num-partitions``).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedcomp.clients.faults import METRIC_ATTACKS, PAYLOAD_ATTACKS, UPDATE_ATTACKS, attack_of
from fedcomp.clients.state import fit_state, load_state, save_state, state_dir_for
from fedcomp.clients.training import float_state, model_delta, resolve_device, train_local
from fedcomp.coding import DecodeError, check_all_values
from fedcomp.compressors.model.base import ModelCompressor, build_model_compressor
from fedcomp.compressors.model.structure import Architecture
from fedcomp.compressors.update import UPDATE_COMPRESSORS
from fedcomp.compressors.update.base import EncodeContext, UpdateCompressor
from fedcomp.compressors.update.feedback import encode_with_feedback
from fedcomp.config import ExperimentConfig, config_from_dict
from fedcomp.data import ImageData, SplitData, experiment_partitions, load_dataset
from fedcomp.messages import (
    CHECKPOINT_ROUND_KEY,
    METRICS_KEY,
    PAYLOAD_KEY,
    STATE_DIR_KEY,
    experiment_from,
    payload_from,
    payload_record,
)
from fedcomp.seeding import FAULTS, TRAIN_SHUFFLE, numpy_rng, torch_generator

logger = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """Raised on purpose by ``faults.client_raise_rate``."""


class TrainingDivergedError(RuntimeError):
    """Local training produced a non-finite update: nothing worth sending (and no codec should see it)."""


def check_update(update: dict[str, torch.Tensor], loss: float) -> None:
    """Refuse to encode an update with NaN or inf in it (a learning rate far too large, say).

    The same one-pass check the receiver runs on decoded tensors (:func:`fedcomp.coding.check_all_values`).
    """
    try:
        check_all_values(list(update.items()))
    except DecodeError as exc:
        raise TrainingDivergedError(f"local training diverged (loss {loss:.3g}): {exc}; lower client.lr") from None


@dataclass
class ClientRuntime:
    """What a client derives once from the configuration (cached per process)."""

    cfg: ExperimentConfig
    split: SplitData
    partition_id: int
    data: ImageData
    arch: Architecture
    downlink: ModelCompressor
    """Decodes the broadcast (the same model compressor the server runs)."""
    compressor: UpdateCompressor
    device: torch.device


@functools.lru_cache(maxsize=16)
def _runtime(config_json: str, partition_id: int, num_partitions: int) -> ClientRuntime:
    cfg = config_from_dict(json.loads(config_json))
    if num_partitions != cfg.federation.num_clients:
        raise ValueError(f"node has num-partitions={num_partitions}, config has {cfg.federation.num_clients} clients")
    d = cfg.data
    split = load_dataset(d.dataset, d.data_dir, d.download, d.test_size, cfg.seed)
    parts = experiment_partitions(cfg, split.train.labels.numpy())
    arch = Architecture(cfg.model.name, split.input_shape, split.num_classes)
    comp_cls = UPDATE_COMPRESSORS.get(cfg.uplink.name)
    compressor = comp_cls(comp_cls.parse_params(cfg.uplink.params, "uplink"), seed=cfg.seed)
    return ClientRuntime(
        cfg=cfg,
        split=split,
        partition_id=partition_id,
        data=split.train.subset(parts[partition_id]),
        arch=arch,
        downlink=build_model_compressor(cfg, arch),
        compressor=compressor,
        device=resolve_device(cfg.simulation.device),
    )


def runtime_for(msg: Message, context: Context) -> ClientRuntime:
    """The cached runtime for the message's experiment and this node's partition."""
    return _runtime(
        json.dumps(experiment_from(msg.content), sort_keys=True),
        int(context.node_config["partition-id"]),
        int(context.node_config["num-partitions"]),
    )


app = ClientApp()


@app.query()
def warm_up(msg: Message, context: Context) -> Message:
    """Load data, partition and model once, before round 1 (see ``servers.app.warm_up``)."""
    rt = runtime_for(msg, context)
    metrics = MetricRecord({"partition-id": rt.partition_id, "num-examples": len(rt.data)})
    return Message(content=RecordDict({METRICS_KEY: metrics}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of local training; replies with the compressed update."""
    t0 = time.perf_counter()
    rt = runtime_for(msg, context)
    partition_id = rt.partition_id
    cfg = rt.cfg
    server_round = int(msg.content.config_records["config"]["server-round"])
    torch.set_num_threads(max(1, int(cfg.simulation.num_cpus)))

    train_config = msg.content.config_records["config"]
    # Injected faults (seeded per client and round): raise, corrupt the payload, or be too slow.
    draw_raise, draw_corrupt, draw_delay = numpy_rng(cfg.seed, FAULTS, server_round, partition_id).random(3)
    fault_rng = numpy_rng(cfg.seed, FAULTS, server_round, partition_id, 1)
    attack = attack_of(cfg.faults, partition_id, server_round)
    if draw_raise < cfg.faults.client_raise_rate or attack == "raise":
        raise InjectedFault(f"injected fault: client {partition_id} in round {server_round}")
    if draw_delay < cfg.faults.client_delay_rate:  # a slow device or link: past the round timeout, it fails
        time.sleep(cfg.faults.client_delay_s)

    # Downlink: the global model arrives as a payload; the model compressor rebuilds the module
    # (its architecture may have changed) and may add a loss term (LC's penalty).
    broadcast = payload_from(msg.content)
    received = rt.downlink.decode(broadcast, max_abs=cfg.federation.max_abs_value)
    model = rt.arch.build(received.structure)
    model.load_state_dict(received.state)
    model.to(rt.device)
    before = float_state(model)
    t_decode = time.perf_counter()

    gen = torch_generator(cfg.seed, TRAIN_SHUFFLE, server_round, partition_id)
    for module in model.modules():  # layers that draw noise in training (BWCP's Gumbel masks) use the round's seed
        if hasattr(module, "generator"):
            module.generator = gen
    stats = train_local(model, rt.data, cfg.client, gen, rt.device, loss_term=received.loss_term)
    t_train = time.perf_counter()

    update = model_delta(float_state(model), before)
    check_update(update, stats.loss)
    if attack in UPDATE_ATTACKS:
        UPDATE_ATTACKS[attack](update)
    root = state_dir_for(context, str(train_config.get(STATE_DIR_KEY, "")) or None)
    folder = root / str(partition_id) if root is not None else None
    state = fit_state(load_state(context, folder, server_round), update)
    ctx = EncodeContext(server_round, partition_id, cfg.federation.num_clients)
    encoded = encode_with_feedback(rt.compressor, update, state, ctx)
    save_state(context, folder, server_round, encoded.state, int(train_config.get(CHECKPOINT_ROUND_KEY, 0)))
    t_encode = time.perf_counter()
    payload = encoded.payload
    if draw_corrupt < cfg.faults.corrupt_payload_rate:  # injected: one flipped byte in transit
        pos = int(fault_rng.integers(len(payload)))
        payload = payload[:pos] + bytes([payload[pos] ^ 0xFF]) + payload[pos + 1 :]

    metrics = {
        "num-examples": stats.num_examples,
        "partition-id": partition_id,
        "train_loss": stats.loss,
        "local_steps": stats.steps,
        "decode_s": t_decode - t0,
        "train_s": t_train - t_decode,
        "encode_s": t_encode - t_train,
        "payload-bytes": len(encoded.payload),
        "downlink-bytes": len(broadcast),
        **{f"uplink_{k}": float(v) for k, v in encoded.metrics.items()},
    }
    if attack in METRIC_ATTACKS:
        METRIC_ATTACKS[attack](metrics, partition_id, cfg.federation.num_clients)
    if attack in PAYLOAD_ATTACKS:
        payload = PAYLOAD_ATTACKS[attack](update)
    content = RecordDict({PAYLOAD_KEY: payload_record(payload), METRICS_KEY: MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
