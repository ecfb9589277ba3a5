"""The uplink's two ends (fedcomp/flower/uplink.py): what the client encodes, the server decodes and counts."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedcomp.coding import DecodeError
from fedcomp.compressors.model.structure import Architecture
from fedcomp.compressors.update.base import EncodeContext, NonFiniteUpdateError
from fedcomp.flower.transport import Transport
from fedcomp.flower.uplink import UplinkReceiver, encode_update, with_payload
from fedcomp.messages import payload_from

ARCH = Architecture("mlp", (1, 4, 4), 3)


def update_of(scale: float = 0.01) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    state = ARCH.build().state_dict()
    return {k: scale * torch.randn(v.shape, generator=gen) for k, v in state.items() if v.is_floating_point()}


def test_what_the_client_encodes_the_server_decodes_and_counts():
    transport = Transport(uplink="topk", uplink_params={"density": 0.5})
    update, dropped = update_of(), []
    encoded = encode_update(transport.update_compressor(), update, {}, EncodeContext(), lambda: dropped.append(1))
    receiver = UplinkReceiver(transport.update_compressor(), ARCH, 1e6)
    decoded = receiver.decode(encoded.payload)
    assert {k: v.shape for k, v in decoded.items()} == {k: v.shape for k, v in update.items()} and not dropped
    assert receiver.count(encoded.payload) == len(encoded.payload) > 0
    reply = RecordDict({"arrays": ArrayRecord(), "metrics": MetricRecord({"a": 1}), "config": ConfigRecord()})
    content = with_payload(reply, encoded.payload)
    assert payload_from(content) == encoded.payload and "arrays" not in content and "metrics" in content
    with pytest.raises(DecodeError):  # a bound the values break
        UplinkReceiver(transport.update_compressor(), ARCH, 1e-9).decode(encoded.payload)


def test_a_non_finite_residual_is_dropped_and_nothing_is_sent():
    update, dropped = update_of(), []
    name = next(iter(update))
    stored = {f"residual/{name}": torch.full_like(update[name], float("nan"))}
    with pytest.raises(NonFiniteUpdateError, match="residual"):
        encode_update(Transport().update_compressor(), update, stored, EncodeContext(), lambda: dropped.append(1))
    assert dropped == [1]
    update[name][0] = float("inf")
    with pytest.raises(NonFiniteUpdateError, match="the update is not finite"):
        encode_update(Transport().update_compressor(), update, {}, EncodeContext(), lambda: dropped.append(1))
    assert dropped == [1]
