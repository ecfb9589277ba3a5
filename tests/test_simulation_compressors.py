"""One tiny real Flower simulation per uplink compressor (3 clients, 2 rounds)."""

from __future__ import annotations

import pytest

import fedcomp


@pytest.mark.parametrize(
    "uplink",
    [
        {"name": "surp", "density": 0.001},
        {"name": "rtopk", "density": 0.001},
        {"name": "dgc", "density": 0.001},
        {"name": "topk", "density": 0.01, "values": "fp16"},
        {"name": "randomk", "density": 0.01},
    ],
    ids=lambda u: u["name"],
)
def test_compressed_uplink_bytes_are_the_payload_lengths(make_config, uplink):
    cfg = make_config(uplink=uplink, client={"local_steps": 2}, federation={"rounds": 2})
    result = fedcomp.run(cfg, progress=False)
    dense_fp32 = 431_080 * 4
    for row in result.rows:
        assert row["failed_clients"] == 0 and len(row["clients"]) == 3
        # What the server received is byte for byte what each client measured before sending.
        assert row["uplink_bytes_per_client"] == row["uplink_bytes_sent_per_client"]
        assert row["uplink_bytes"] == sum(row["uplink_bytes_per_client"])
        assert all(b < dense_fp32 / 20 for b in row["uplink_bytes_per_client"])  # really compressed
        # ... and really sent: at least one bit per coordinate the density asks for (a codec sending nothing fails).
        assert all(8 * b >= uplink["density"] * 431_080 for b in row["uplink_bytes_per_client"])
        assert row["client_metrics"]["uplink_density"] <= (
            0.003 if uplink["name"] == "dgc" else uplink["density"] * 1.01
        )
    assert result.rows[-1]["test_accuracy"] is not None
