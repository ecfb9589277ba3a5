"""The ServerApp: a Flower strategy wrapped by fedcomp's CompressedStrategy (a few lines)."""

from __future__ import annotations

import json

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg

from fedcomp.flower import AppRecorder, CompressedStrategy
from flower_app.task import Net, load_data, test

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    torch.manual_seed(0)
    initial = ArrayRecord(Net().state_dict())
    if rc["strategy"] == "fedadam":  # adaptive server optimizers and sparse updates: see docs/own_code.md
        strategy = FedAdam(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=2, eta=0.01, eta_l=0.05)
    else:
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=2)
    if rc["compression"] != "none":
        # fedcomp: the same strategy, with compressed, counted and checked transport around it.
        strategy = CompressedStrategy(
            strategy,
            model_fn=Net,
            uplink=str(rc["compression"]),
            uplink_params=json.loads(str(rc["compression-params"])),
            server_compression=str(rc["server-compression"]),
            # "surp", say: the model's change goes down compressed (each client gets what it missed).
            downlink=str(rc["downlink"]),
            # A fedcomp run directory (fedcomp report compares it with other runs); "" = none.
            recorder=AppRecorder(str(rc["run-dir"]), experiment=EXPERIMENT) if rc["run-dir"] else None,
        )
    _, testloader = load_data(0, 1)

    def central_evaluation(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = Net()
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = test(model, testloader)
        print(f"round {server_round}: test accuracy {acc:.3f}")
        return MetricRecord({"accuracy": acc, "loss": loss})

    result = strategy.start(
        grid=grid, initial_arrays=initial, num_rounds=int(rc["num-server-rounds"]), evaluate_fn=central_evaluation
    )
    if rc["result-file"]:
        accuracy = {r: float(m["accuracy"]) for r, m in result.evaluate_metrics_serverapp.items()}
        torch.save({"model": result.arrays.to_torch_state_dict(), "accuracy": accuracy}, str(rc["result-file"]))


# What the recorder cannot know about this app, in fedcomp's config keys: the same federation as
# `fedcomp run` with data.dataset = "mnist5k" (test_size 1000), an IID split and this Net.
EXPERIMENT = {"data": {"dataset": "mnist5k", "test_size": 1000, "partition": "iid"}}
