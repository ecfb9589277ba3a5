"""Local training and evaluation: the plain PyTorch loop every client runs.

Kept free of Flower so the overhead benchmark can run exactly the same
training without the federation around it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from fedcomp.data import ImageData
from fedcomp.imports import resolve
from fedcomp.schema import ClientConfig


def resolve_device(setting: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("simulation.device = 'cuda' but no CUDA device is available")
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def loss_fn(kind: str, classification: bool) -> LossFn:
    """``client.loss``: cross-entropy on class labels, MSE on float targets (auto picks by the targets), or yours."""
    if ":" in kind:
        return resolve(kind, "client.loss")
    if kind == "auto":
        kind = "cross_entropy" if classification else "mse"
    if kind == "cross_entropy":
        if not classification:
            raise ValueError("client.loss = 'cross_entropy' needs integer class labels; these targets are floats")
        return F.cross_entropy
    return _mse


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error; a single-output model's (N, 1) matches (N,) targets."""
    if out.ndim == 2 and out.shape[1] == 1 and y.ndim == 1:
        out = out.squeeze(1)
    if y.dtype == torch.int64:
        y = y.float()
    return F.mse_loss(out, y)


def scheduled(cfg: ClientConfig, server_round: int, rounds: int) -> ClientConfig:
    """The client settings of ``server_round`` with ``client.lr_schedule`` applied to the learning rate."""
    if cfg.lr_schedule == "exponential":
        return replace(cfg, lr=cfg.lr * cfg.lr_gamma ** (server_round - 1))
    if cfg.lr_schedule == "cosine":
        return replace(cfg, lr=cfg.lr * 0.5 * (1 + math.cos(math.pi * (server_round - 1) / max(rounds, 1))))
    return cfg


class SGD:
    """Stochastic gradient descent with heavy-ball momentum and L2 weight decay: ``torch.optim.SGD``'s update
    with dampening 0 and no Nesterov term, the same operations in the same order (equal bit for bit; tested).

    g ← ∇L + λw;  b ← g on the first step, else μb + g;  w ← w − η·(b if μ > 0 else g).

    Why not ``torch.optim.SGD`` itself: every ``torch.optim.Optimizer`` imports TorchDynamo the first time
    one is built in a process (torch 2.14: 1.9 CPU-seconds, three times a LeNet-5 client's 63-step round here), and
    Flower's deployment runtime starts a fresh process for every message, so each client paid it in every
    round. Adam, UDFC's distillation and users' own ``train_fn`` keep ``torch.optim``.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:  # a parameter this loss did not reach: untouched, as torch.optim.SGD leaves it
                continue
            g = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            if self.momentum != 0:
                b = self.buffers[i]
                if b is None:
                    b = self.buffers[i] = g.detach().clone()
                else:
                    b.mul_(self.momentum).add_(g)
                g = b
            p.add_(g, alpha=-self.lr)


def make_optimizer(model: nn.Module, cfg: ClientConfig) -> SGD | torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@dataclass
class TrainStats:
    loss: float
    """Mean training loss over the local steps."""
    num_examples: int
    """Size of the local dataset (the FedAvg weight)."""
    steps: int


def train_local(
    model: nn.Module,
    data: ImageData,
    cfg: ClientConfig,
    generator: torch.Generator,
    device: torch.device,
    loss_term: Callable[[nn.Module], torch.Tensor] | None = None,
    loss: LossFn = F.cross_entropy,
) -> TrainStats:
    """Train in place for ``local_steps`` mini-batches if set, else ``local_epochs``.

    ``loss_term`` (from the model compressor: LC's μ/2‖w − t‖²) is added to
    every mini-batch's loss; the reported loss is the data loss alone. A
    term with a ``proximal_step`` (LC's penalty) is applied exactly after
    each SGD step instead, which stays stable for any μ (see
    :meth:`ProximalTerm.proximal_step`); with Adam, whose steps are
    normalized, it is added to the loss.
    """
    model.train()
    opt = make_optimizer(model, cfg)
    prox = getattr(loss_term, "proximal_step", None) if cfg.optimizer == "sgd" else None
    budget = cfg.local_steps if cfg.local_steps > 0 else None
    total, steps = 0.0, 0
    epochs = cfg.local_epochs if budget is None else 1 << 30
    for _ in range(epochs):
        for x, y in data.batches(cfg.batch_size, generator, device):
            opt.zero_grad(set_to_none=True)
            value = loss(model(x), y)
            (value + loss_term(model) if loss_term is not None and prox is None else value).backward()
            opt.step()
            if prox is not None:
                prox(model, cfg.lr)
            total += float(value.detach())
            steps += 1
            if budget is not None and steps >= budget:
                return TrainStats(total / steps, len(data), steps)
    return TrainStats(total / max(steps, 1), len(data), steps)


@torch.no_grad()
def evaluate(
    model: nn.Module, data: ImageData, device: torch.device, batch_size: int = 1000, loss: LossFn | None = None
) -> tuple[float, float | None]:
    """Mean loss (cross-entropy by default) and accuracy on ``data``; accuracy is None for float targets."""
    model.eval()
    loss = loss or F.cross_entropy
    loss_sum, correct = 0.0, 0
    for x, y in data.batches(batch_size, None, device):
        out = model(x)
        loss_sum += float(loss(out, y)) * len(y)
        if data.is_classification:
            correct += int((out.argmax(1) == y).sum())
    n = max(len(data), 1)
    return loss_sum / n, (correct / n if data.is_classification else None)


@torch.no_grad()
def evaluate_metric(
    model: nn.Module,
    data: ImageData,
    device: torch.device,
    metric: Callable[[torch.Tensor, torch.Tensor], float],
    batch_size: int = 1000,
) -> float:
    """``client.eval_metric`` over ``data``: the batch means, weighted by batch size."""
    model.eval()
    total = 0.0
    for x, y in data.batches(batch_size, None, device):
        total += float(metric(model(x), y)) * len(y)
    return total / max(len(data), 1)


def metric_key(metric: Callable) -> str:
    """Where ``client.eval_metric``'s value is recorded: ``test_<its name>``, on the server and the clients."""
    return f"test_{getattr(metric, '__name__', 'metric')}"


def float_state(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The model's floating-point state (parameters and float buffers), detached on CPU."""
    return OrderedDict(
        (k, v.detach().to("cpu").clone()) for k, v in model.state_dict().items() if v.is_floating_point()
    )


def model_delta(after: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """The update ``w_local − w_global`` over the floating-point entries of ``before``."""
    return OrderedDict((k, after[k].float() - v.float()) for k, v in before.items() if v.is_floating_point())
