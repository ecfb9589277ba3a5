"""The ServerApp: Flower's FedAdam, wrapped by fedcomp's CompressedStrategy (a few lines)."""

from __future__ import annotations

import json

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam

from fedcomp.flower import CompressedStrategy
from flower_app.task import Net

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    torch.manual_seed(0)
    initial = ArrayRecord(Net().state_dict())
    strategy = FedAdam(fraction_train=1.0, fraction_evaluate=0.5, min_available_nodes=2, eta=0.01, eta_l=0.05)
    if rc["compression"] != "none":
        # fedcomp: the same FedAdam, with compressed, counted and checked transport around it.
        strategy = CompressedStrategy(
            strategy,
            model_fn=Net,
            uplink=str(rc["compression"]),
            uplink_params=json.loads(str(rc["compression-params"])),
            downlink=str(rc["downlink"]),
            # "surp", say: the model's change goes down compressed (each client gets what it missed).
            downlink_update=str(rc.get("downlink-update", "identity")),
        )
    rounds: list[dict] = []

    def after_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        stats = strategy.take_round_stats() if isinstance(strategy, CompressedStrategy) else None
        if stats is not None:
            rounds.append({"round": server_round, "uplink_bytes": stats.uplink_bytes_total,
                           "downlink_bytes": stats.downlink_bytes, "failures": len(stats.failures)})  # fmt: skip
            print(f"round {server_round}: uplink {stats.uplink_bytes_total} B, downlink {stats.downlink_bytes} B")
        return None

    result = strategy.start(
        grid=grid, initial_arrays=initial, num_rounds=int(rc["num-server-rounds"]), evaluate_fn=after_round
    )
    if rc["result-file"]:
        torch.save({"model": result.arrays.to_torch_state_dict(), "rounds": rounds}, str(rc["result-file"]))
