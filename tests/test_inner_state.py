"""The inner strategy's state adapter (fedcomp/flower/inner_state.py): what it reads of Flower's strategies exists."""

from __future__ import annotations

import flwr
import pytest
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM

from fedcomp.compressors.model.structure import Architecture
from fedcomp.config import config_from_dict
from fedcomp.flower import CompressedStrategy
from fedcomp.flower.inner_state import KNOWN, InnerState, InnerStateError, known_state
from fedcomp.strategies import STRATEGIES, build_strategy

ARCH = Architecture("mlp", (1, 4, 4), 3)
REQUIRED = {"qfedavg": {"client_learning_rate": 0.1}, "fedprox": {"proximal_mu": 0.1}}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_registered_strategy_has_the_attributes_fedcomp_reads(name):
    inner = build_strategy(config_from_dict({"strategy": {"name": name, **REQUIRED.get(name, {})}}))
    state = InnerState(inner)  # raises if Flower renamed one
    assert all(hasattr(inner, a) for a in state.known.attributes)
    assert state.state_dict() == {}  # nothing kept before the first round
    CompressedStrategy(inner, arch=ARCH)


def test_the_known_strategies_are_the_stateful_ones():
    assert known_state(FedAdam()).state == ("m_t", "v_t")
    assert known_state(FedAvgM()).state == ("momentum_vector",)
    assert known_state(FedAvgM()).model_copy == "current_arrays"
    assert known_state(FedAvg()).attributes == ()
    registered = {STRATEGIES.get(n).flower_class() for n in STRATEGIES}
    assert {cls.__name__ for cls in set(KNOWN) - registered} == {"FedOpt"}  # the rest are fedcomp's own


class RenamedMomentum(FedAvgM):
    """A Flower upgrade as it would look: FedAvgM's momentum under another name."""

    def __init__(self) -> None:
        super().__init__()
        self.momentum = self.momentum_vector
        del self.momentum_vector


def test_a_renamed_attribute_fails_when_the_wrapper_is_built():
    with pytest.raises(InnerStateError, match=rf"'momentum_vector'.*Flower {flwr.__version__}"):
        CompressedStrategy(RenamedMomentum(), arch=ARCH)


def test_save_load_and_reset_round_trip():
    import numpy as np

    inner = FedAvgM()
    inner.momentum_vector = [np.ones(3, dtype=np.float32)]
    inner.current_arrays = object()
    saved = InnerState(inner).state_dict()
    other = FedAvgM()
    InnerState(other).load_state_dict({**saved, "m_t": {"w": saved["momentum_vector"][0]}})
    assert np.array_equal(other.momentum_vector[0], np.ones(3)) and not hasattr(other, "m_t")
    assert InnerState(inner).reset() == ["momentum_vector"]
    assert inner.momentum_vector is None and inner.current_arrays is None
