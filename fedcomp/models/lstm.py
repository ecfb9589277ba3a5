"""LEAF's Shakespeare model: a character embedding, a 2-layer LSTM, a softmax over the characters.

Caldas et al., "LEAF: A Benchmark for Federated Settings" (2018),
``models/shakespeare/stacked_lstm.py``: embedding of dimension 8, two
stacked LSTM layers of 256 units, a dense layer on the last step's output
to the vocabulary's logits (the next character after an 80-character
window). With LEAF's 80 symbols that is 640 + 272,384 + 526,336 + 20,560 =
819,920 parameters here.

Departure: PyTorch's LSTM has two bias vectors per layer (input and
hidden), TensorFlow's ``BasicLSTMCell`` one, and ``BasicLSTMCell`` adds 1
to the forget gate's bias; so 2,048 more parameters and the usual PyTorch
initialization (uniform ±1/√hidden). ``embed``, ``hidden`` and ``layers``
are parameters (``[model.params]``) so tests can run a small one.
"""

from __future__ import annotations

import torch
from torch import nn

from fedcomp.models.base import MODELS


class CharLSTM(nn.Module):
    """Token ids (N, L) → logits (N, vocab) for the token after the sequence."""

    def __init__(self, vocab: int, embed: int = 8, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        for name, value in (("vocab", vocab), ("embed", embed), ("hidden", hidden), ("layers", layers)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"leaf_lstm: {name} must be an integer >= 1, got {value!r}")
        self.vocab = vocab
        self.embedding = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.is_floating_point():
            raise ValueError(f"leaf_lstm takes integer token ids (batch, length), got {x.dtype} {tuple(x.shape)}")
        out, _ = self.lstm(self.embedding(x.long()))
        return self.head(out[:, -1, :])


@MODELS.register(
    "leaf_lstm", "LEAF's Shakespeare model: embedding 8, 2-layer LSTM 256, softmax over the characters (819,920 params)"
)
def leaf_lstm(
    input_shape: tuple[int, ...], num_classes: int, embed: int = 8, hidden: int = 256, layers: int = 2
) -> nn.Module:
    if len(input_shape) != 1:
        raise ValueError(f"leaf_lstm takes token sequences (length,), got inputs of shape {tuple(input_shape)}")
    return CharLSTM(num_classes, embed, hidden, layers)
