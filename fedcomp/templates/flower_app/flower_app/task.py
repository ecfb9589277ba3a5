"""The model, the data and the training loop: plain PyTorch, nothing of fedcomp's but the dataset file.

The digits are the 5,000 MNIST images embedded in fedcomp (no download),
split evenly across the nodes by ``partition-id``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    """A small CNN for 28×28 digits (as in Flower's PyTorch quickstart)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _digits():
    from fedcomp.data import load_dataset  # the embedded digits: no internet needed

    split = load_dataset("mnist5k", test_size=1000, seed=0)

    def tensors(data):
        return TensorDataset(data.normalize(data.images), data.labels)

    return tensors(split.train), tensors(split.test)


def load_data(partition_id: int, num_partitions: int, batch_size: int = 32) -> tuple[DataLoader, DataLoader]:
    """This node's share of the training digits (an even, seeded split) and the test digits."""
    train, test = _digits()
    order = np.random.default_rng(0).permutation(len(train))
    mine = np.array_split(order, num_partitions)[partition_id]
    shuffle = torch.Generator().manual_seed(partition_id)
    train_loader = DataLoader(
        torch.utils.data.Subset(train, mine.tolist()), batch_size, shuffle=True, generator=shuffle
    )
    return train_loader, DataLoader(test, batch_size=500)


def train(net: nn.Module, loader: DataLoader, epochs: int, lr: float) -> float:
    """Plain SGD; returns the mean training loss."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    net.train()
    total, steps = 0.0, 0
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            total += float(loss)
            steps += 1
    return total / max(steps, 1)


@torch.no_grad()
def test(net: nn.Module, loader: DataLoader) -> tuple[float, float]:
    net.eval()
    loss, correct, n = 0.0, 0, 0
    for x, y in loader:
        out = net(x)
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        n += len(y)
    return loss / n, correct / n
