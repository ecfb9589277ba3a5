"""Derived seeds: one experiment seed, independent streams for every use."""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for the stream named by ``keys`` (round, client, purpose...)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def numpy_rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *keys))


def torch_generator(seed: int, *keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


# Purposes, so two uses of the same (round, client) never share a stream.
TRAIN_SHUFFLE, CLIENT_SAMPLING, FAULTS, MODEL_INIT, LOCAL_TEST = 1, 2, 3, 4, 5
# 11 and 12 are the sparsifiers' selection and SuRP's shared order (their modules name them).
UPLINK_QUANTIZATION, POWERSGD_INIT = 13, 14  # stochastic rounding (QSGD, TernGrad); PowerSGD's first Q
STATISTICS_SAMPLE = 15  # the examples a client measures normalization statistics on (flower.recalibration)
