"""What a client derives once from the experiment configuration it is sent: its data, model and device.

Cached per process (a simulated client's worker serves many rounds and many
partitions): the configuration is parsed and checked, the data loaded and
split, as the server did in its own checks, once per experiment and partition.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Context, Message

from fedcomp.clients.training import resolve_device
from fedcomp.compressors.model.structure import Architecture
from fedcomp.config import ExperimentConfig, config_from_dict
from fedcomp.data import ImageData, SplitData, experiment_partitions, load_experiment_data
from fedcomp.data.experiment import local_split
from fedcomp.imports import current_patterns
from fedcomp.messages import experiment_from


@dataclass
class ClientRuntime:
    """What a client derives once from the configuration (cached per process)."""

    cfg: ExperimentConfig
    split: SplitData
    partition_id: int
    data: ImageData
    """What this client trains on."""
    arch: Architecture
    device: torch.device
    local_test: ImageData | None = None
    """Its held-out share (``data.client_test_fraction``) when clients evaluate; None otherwise."""


@functools.lru_cache(maxsize=16)
def _runtime(
    config_json: str,
    partition_id: int,
    num_partitions: int,
    own_data_dir: str = "",
    allowed: tuple[str, ...] | None = None,  # loaded under one allow-list: not reused under a narrower one
) -> ClientRuntime:
    cfg = config_from_dict(json.loads(config_json))
    if num_partitions != cfg.federation.num_clients:
        raise ValueError(f"node has num-partitions={num_partitions}, config has {cfg.federation.num_clients} clients")
    if cfg.data.per_node:  # a device's own data, all of it: no partition of a shared set
        if not own_data_dir:
            raise ValueError(
                "data.per_node = true, but this node's config has no data-dir (--node-config data-dir=...)"
            )
        split = load_experiment_data(cfg, data_dir=own_data_dir)
        mine = np.arange(len(split.train))
    else:
        split = load_experiment_data(cfg)
        mine = experiment_partitions(cfg, split.train.labels.numpy(), split.partitions)[partition_id]
    arch = Architecture.of_config(cfg, split.input_shape, split.num_classes)
    mine, test_idx = local_split(cfg, split, partition_id, mine)
    local_test = split.train.subset(test_idx) if test_idx is not None else None
    return ClientRuntime(
        cfg=cfg,
        split=split,
        partition_id=partition_id,
        data=split.train.subset(mine),
        arch=arch,
        device=resolve_device(cfg.simulation.device),
        local_test=local_test,
    )


def runtime_for(msg: Message, context: Context) -> ClientRuntime:
    """The cached runtime for the message's experiment and this node's partition."""
    return _runtime(
        json.dumps(experiment_from(msg.content), sort_keys=True),
        int(context.node_config["partition-id"]),
        int(context.node_config["num-partitions"]),
        str(context.node_config.get("data-dir", "")),
        current_patterns(),
    )
