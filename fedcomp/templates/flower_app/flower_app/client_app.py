"""The ClientApp: Flower's own train and evaluate functions, plus fedcomp's mod (one line)."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedcomp.flower import CompressionMod
from flower_app.task import Net, load_data, test, train

# fedcomp: the mod decodes what the server sends into msg.content["arrays"] and compresses
# what train() returns. Messages without fedcomp's settings pass through it untouched.
app = ClientApp(mods=[CompressionMod(model_fn=Net)])


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    torch.manual_seed(int(context.node_config["partition-id"]))
    torch.set_num_threads(1)
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    trainloader, _ = load_data(int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]))
    loss = train(model, trainloader, int(context.run_config["local-epochs"]), float(context.run_config["lr"]))
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(trainloader.dataset)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    _, testloader = load_data(int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]))
    loss, acc = test(model, testloader)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(testloader.dataset)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
