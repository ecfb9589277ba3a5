"""Every uplink compressor's bytes are the payloads': a tiny real Flower simulation (3 clients, 2 rounds) for
SuRP, and for every compressor fedcomp's own train function, client mod and strategy wrapper in one
process (real training, real payloads, real decoding; only the engine's hand-over is direct).
"""

from __future__ import annotations

import json

import pytest

import fedcomp
from tests.flower_grid import InMemoryFederation

UPLINKS = {
    "surp": {"name": "surp", "density": 0.001},
    "rtopk": {"name": "rtopk", "density": 0.001},
    "dgc": {"name": "dgc", "density": 0.001},
    "topk": {"name": "topk", "density": 0.01, "values": "fp16"},
    "randomk": {"name": "randomk", "density": 0.01},
    "qsgd": {"name": "qsgd", "levels": 4},
    "terngrad": {"name": "terngrad"},
    "ef_signsgd": {"name": "ef_signsgd"},
    "powersgd": {"name": "powersgd", "rank": 2},
    "eden": {"name": "eden", "bits": 2},
    "topk-zstd": {"name": "topk", "density": 0.01, "lossless": "zstd"},
}
DENSE_FP32 = 431_080 * 4


def test_compressed_uplink_bytes_are_the_payload_lengths(make_config):
    # One compressed codec through the engine (its state in Flower's Context.state across rounds); every
    # codec goes through the same client mod and strategy wrapper in the next test.
    uplink = UPLINKS["surp"]
    cfg = make_config(uplink=uplink, client={"local_steps": 2}, federation={"rounds": 2})
    result = fedcomp.run(cfg, progress=False)
    assert_really_compressed_and_sent(result.rows, uplink)
    assert result.rows[-1]["test_accuracy"] is not None


@pytest.mark.usefixtures("task_identity")
@pytest.mark.parametrize("name", sorted(UPLINKS))
def test_every_uplink_through_fedcomps_own_client_and_server(make_config, name):
    """fedcomp's train function inside the mod, its server's wrapper: two rounds, every compressor."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

    from fedcomp.clients.app import train
    from fedcomp.compressors.model.structure import Architecture
    from fedcomp.config import config_from_dict
    from fedcomp.flower import CompressionMod
    from fedcomp.messages import EXPERIMENT_KEY
    from fedcomp.servers.app import compressed_strategy, initial_model

    uplink = UPLINKS[name]
    cfg = config_from_dict(make_config(uplink=uplink, client={"local_steps": 2}, federation={"rounds": 2}))
    model = initial_model(cfg, (1, 28, 28), 10)
    strategy = compressed_strategy(cfg, Architecture.of_config(cfg, (1, 28, 28), 10))
    federation = InMemoryFederation(3)  # Flower's own grid: the sampler asks it which nodes are connected
    nodes = federation.node_ids
    contexts = {
        n: Context(
            run_id=1, node_id=n, node_config={"partition-id": i, "num-partitions": 3}, state=RecordDict(), run_config={}
        )  # fmt: skip
        for i, n in enumerate(nodes)
    }

    arrays, rows, mod = ArrayRecord(model.state_dict()), [], CompressionMod()
    for server_round in (1, 2):
        config = ConfigRecord({EXPERIMENT_KEY: json.dumps(cfg.to_dict())})
        messages = strategy.configure_train(server_round, arrays, config, federation.grid)
        replies = []
        for m in messages:
            replies.append(mod(m, contexts[int(m.metadata.dst_node_id)], train))
        arrays, _ = strategy.aggregate_train(server_round, replies)
        stats = strategy.take_round_stats()
        rows.append(
            {
                "failed_clients": len(stats.failures),
                "clients": stats.clients,
                "uplink_bytes_per_client": stats.uplink_bytes,
                "uplink_bytes_sent_per_client": stats.uplink_bytes_sent,
                "uplink_bytes": stats.uplink_bytes_total,
                "client_metrics": stats.client_metrics,
            }
        )
    assert_really_compressed_and_sent(rows, uplink)


def assert_really_compressed_and_sent(rows, uplink) -> None:
    for row in rows:
        assert row["failed_clients"] == 0 and len(row["clients"]) == 3
        # What the server received is byte for byte what each client measured before sending.
        assert row["uplink_bytes_per_client"] == row["uplink_bytes_sent_per_client"]
        assert row["uplink_bytes"] == sum(row["uplink_bytes_per_client"])
        if "density" not in uplink:  # the quantizers and PowerSGD: at least 8x below fp32, and what they report sent
            density = row["client_metrics"]["uplink_density"]
            assert 0 < density and all(density * 431_080 <= 8 * b < DENSE_FP32 for b in row["uplink_bytes_per_client"])
            continue
        assert all(b < DENSE_FP32 / 20 for b in row["uplink_bytes_per_client"])  # really compressed
        # ... and really sent: at least one bit per coordinate the density asks for (a codec sending nothing fails).
        assert all(8 * b >= uplink["density"] * 431_080 for b in row["uplink_bytes_per_client"])
        assert row["client_metrics"]["uplink_density"] <= (
            0.003 if uplink["name"] == "dgc" else uplink["density"] * 1.01
        )
