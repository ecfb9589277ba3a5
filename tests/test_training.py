"""Local training: epochs, steps, the optimizers and weight decay do what the config says.

Expectations come from the definitions, not from the code: an epoch is
⌈N / batch⌉ mini-batches; SGD with weight decay λ adds λ·w to the gradient; Adam's first step
moves every parameter with a nonzero gradient by lr (its update is
lr·m̂/(√v̂ + ε) with m̂ = g, v̂ = g², Kingma & Ba 2015, Algorithm 1).
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from fedcomp.clients.training import train_local
from fedcomp.config import ClientConfig
from fedcomp.data import ImageData

CPU = torch.device("cpu")


def tiny_data(n: int = 50) -> ImageData:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g)
    return ImageData(images, torch.randint(0, 3, (n,), generator=g), (0.5,), (0.25,))


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


@pytest.mark.parametrize("epochs", [1, 3])
def test_local_epochs_run_every_mini_batch_of_every_epoch(epochs):
    stats = train_local(
        tiny_model(),
        tiny_data(50),
        ClientConfig(local_epochs=epochs, batch_size=16),
        torch.Generator().manual_seed(0),
        CPU,
    )
    assert stats.steps == epochs * math.ceil(50 / 16) and stats.num_examples == 50


def test_local_steps_override_epochs_and_wrap_around_the_data():
    cfg = ClientConfig(local_epochs=1, local_steps=7, batch_size=16)
    stats = train_local(tiny_model(), tiny_data(50), cfg, torch.Generator().manual_seed(0), CPU)
    assert stats.steps == 7  # more than one epoch's 4 batches


def test_weight_decay_adds_lambda_w_to_the_gradient():
    """One SGD step from the same weights on the same batch: w_plain − w_decayed = lr·λ·w₀ (decoupled from the data)."""
    runs = {}
    for decay in (0.0, 0.5):
        model = tiny_model()
        cfg = ClientConfig(local_steps=1, batch_size=16, lr=0.1, weight_decay=decay)
        train_local(model, tiny_data(), cfg, torch.Generator().manual_seed(0), CPU)
        runs[decay] = model[1].weight.detach()
    w0 = tiny_model()[1].weight.detach()
    assert torch.allclose(runs[0.0] - runs[0.5], 0.1 * 0.5 * w0, atol=1e-6)


@pytest.mark.parametrize(("momentum", "decay"), [(0.0, 0.0), (0.9, 0.0), (0.0, 0.01), (0.9, 5e-4)])
def test_sgd_is_torch_optim_sgd_bit_for_bit(momentum, decay):
    """fedcomp's SGD (no TorchDynamo import) against torch.optim.SGD on the same batches: equal weights after
    twelve steps; a parameter the loss never reaches stays as it was, as torch.optim.SGD leaves it."""
    data, cfg = tiny_data(), ClientConfig(local_steps=12, batch_size=16, lr=0.1, momentum=momentum, weight_decay=decay)

    class WithUnused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
            self.unused = nn.Linear(3, 3)  # a parameter of the model that the loss never reaches: no gradient

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    ours = WithUnused()
    train_local(ours, data, cfg, torch.Generator().manual_seed(0), CPU)
    theirs = WithUnused()
    opt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=momentum, weight_decay=decay)
    g = torch.Generator().manual_seed(0)
    batches = [b for _ in range(3) for b in data.batches(16, g, CPU)]  # three epochs of four: train_local's order
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(theirs(x), y).backward()
        opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(ours.unused.weight, WithUnused().unused.weight)


def test_a_fresh_process_trains_and_partitions_without_importing_dynamo_or_hugging_face_datasets():
    """What each client process Flower starts pays: SGD training and an IID partition import neither
    TorchDynamo (torch.optim's first optimizer, 1.9 CPU-s) nor Hugging Face ``datasets`` (1.3-1.7 CPU-s)."""
    code = (
        "import sys, numpy as np, torch\n"
        "from torch import nn\n"
        "from fedcomp.clients.training import train_local\n"
        "from fedcomp.config import ClientConfig\n"
        "from fedcomp.data import ImageData, partition_indices\n"
        "g = torch.Generator().manual_seed(0)\n"
        "data = ImageData(torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8, generator=g),"
        " torch.randint(0, 3, (40,), generator=g), (0.5,), (0.25,))\n"
        "model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))\n"
        "cfg = ClientConfig(local_steps=3, batch_size=8, lr=0.1, momentum=0.9, weight_decay=1e-4)\n"
        "assert train_local(model, data, cfg, g, torch.device('cpu')).steps == 3\n"
        "assert len(partition_indices(np.arange(100) % 10, 4, 'iid')) == 4\n"
        "print(sorted(m for m in ('torch._dynamo', 'datasets') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_adam_first_step_moves_each_parameter_by_lr():
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = ClientConfig(optimizer="adam", local_steps=1, batch_size=50, lr=0.01)
    train_local(model, tiny_data(), cfg, torch.Generator().manual_seed(0), CPU)
    for p, p0 in zip(model.parameters(), before, strict=True):
        step = (p.detach() - p0).abs()
        assert torch.allclose(step[step > 0], torch.full_like(step[step > 0], 0.01), rtol=1e-3)
        assert (step > 0).float().mean() > 0.9  # nearly every weight has a gradient


def test_training_lowers_the_loss_with_either_optimizer():
    for optimizer, lr in (("sgd", 0.5), ("adam", 0.05)):
        model = tiny_model()
        data = tiny_data()
        cfg = ClientConfig(optimizer=optimizer, local_epochs=30, batch_size=50, lr=lr)
        first = train_local(
            model,
            data,
            ClientConfig(optimizer=optimizer, local_steps=1, batch_size=50, lr=lr),
            torch.Generator().manual_seed(0),
            CPU,
        ).loss
        last = train_local(model, data, cfg, torch.Generator().manual_seed(0), CPU).loss
        assert last < 0.8 * first, optimizer


def test_lc_penalty_is_an_exact_proximal_step_that_never_diverges():
    """With lr·μ = 5 the penalty's gradient step multiplies w − t by (1 − 5) each step; the proximal step by 1/6."""
    from fedcomp.compressors.model.base import ProximalTerm

    model = tiny_model()
    centre = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    cfg = ClientConfig(local_steps=20, batch_size=16, lr=0.5)
    train_local(model, tiny_data(), cfg, torch.Generator().manual_seed(0), CPU, loss_term=ProximalTerm(centre, 10.0))
    assert all(torch.isfinite(p).all() and p.abs().max() < 1.0 for p in model.parameters())
    # The same penalty as a plain loss term (what the L step did before) blows up at this μ.
    blown = tiny_model()
    gradient_form = ProximalTerm(centre, 10.0)
    gradient_form.proximal_step = None  # not a proximal term any more: its gradient goes into the loss
    train_local(blown, tiny_data(), cfg, torch.Generator().manual_seed(0), CPU, loss_term=gradient_form)
    assert not all(torch.isfinite(p).all() and p.abs().max() < 1e3 for p in blown.parameters())
    # One step from w with a zero data gradient lands exactly at (w + lr·μ·t) / (1 + lr·μ).
    term = ProximalTerm({name: torch.ones_like(p) for name, p in model.named_parameters()}, 2.0)
    before = [p.detach().clone() for p in model.parameters()]
    term.proximal_step(model, 0.25)
    for p, p0 in zip(model.parameters(), before, strict=True):
        assert torch.allclose(p, (p0 + 0.5) / 1.5)
