"""The downlink of the model's change: the wrapper's channel and the mod, with real Flower messages and bytes.

As in test_flower_building_blocks.py, what stands in for the network is the
hand-over of each message from ``configure_train`` to the mod and of its
reply to ``aggregate_train``; the engine runs in the last test.
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message
from flwr.serverapp.strategy import FedAvg

from fedcomp.coding import DecodeError, DecodeLimits
from fedcomp.compressors.model import MODEL_COMPRESSORS
from fedcomp.compressors.update import UPDATE_COMPRESSORS
from fedcomp.config import ConfigError, config_from_dict
from fedcomp.flower import CompressedStrategy, CompressionMod
from fedcomp.flower.downlink import DownlinkChannel, Held, apply_change, model_crc
from fedcomp.flower.transport import Transport, TransportError
from fedcomp.messages import METRICS_KEY, payload_from
from tests.helpers import update_compressor
from tests.test_flower_building_blocks import ARCH, FEDERATION, NODES, contexts, initial_state, local_train

pytestmark = pytest.mark.usefixtures("task_identity")  # tests/conftest.py: messages need a run and task id

# Who trains in which round: nodes 3 and 4 miss rounds, node 4 joins late.
SCHEDULE = {1: [0, 1, 2], 2: [0, 1, 3], 3: [0, 2], 4: [0, 1, 4], 5: [0, 3, 4], 6: [0, 1, 2, 3, 4]}


def sampler(grid, server_round: int) -> list[int]:
    return [NODES[i] for i in SCHEDULE[server_round]]


def wrapper(**kwargs) -> CompressedStrategy:
    kwargs.setdefault("downlink", "topk")
    kwargs.setdefault("downlink_params", {"density": 0.1})
    return CompressedStrategy(FedAvg(), arch=ARCH, uplink="topk", sampler=sampler, **kwargs)


def deliver(mod, msg, ctx, train):
    """What a ClientApp makes of a raising mod: an error reply."""
    try:
        return mod(msg, ctx, train)
    except Exception as exc:  # noqa: BLE001 - the reply carries it, as Flower's ClientApp does
        return Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)


def federate(strategy, mod, ctxs, rounds, state=None):
    """Rounds through the wrapper and the mod; per round: the payload each node got and what it started from."""
    state = state if state is not None else initial_state()
    log = []
    for r in range(1, rounds + 1):
        started: dict[int, dict[str, torch.Tensor]] = {}

        def train(msg, context, started=started):
            started[context.node_id] = msg.content["arrays"].to_torch_state_dict()
            return local_train(msg, context)

        messages = list(strategy.configure_train(r, ArrayRecord(state), ConfigRecord(), FEDERATION.grid))
        sent = {int(m.metadata.dst_node_id): len(payload_from(m.content)) for m in messages}
        replies = [deliver(mod, m, ctxs[int(m.metadata.dst_node_id)], train) for m in messages]
        start = OrderedDict(strategy.global_state)
        arrays, _ = strategy.aggregate_train(r, replies)
        stats = strategy.take_round_stats()
        log.append({"sent": sent, "started": started, "start": start, "stats": stats})
        state = OrderedDict(arrays.to_torch_state_dict())
    return state, log


def same(a, b) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_every_client_rebuilds_the_servers_model_bit_for_bit_and_a_catch_up_is_what_it_missed():
    strategy = wrapper()
    _, log = federate(strategy, CompressionMod(), contexts(), rounds=6)
    dense = strategy.channel.dense_size
    for r, entry in enumerate(log, start=1):
        stats = entry["stats"]
        assert stats.failures == [] and len(stats.clients) == len(SCHEDULE[r])
        for node, model in entry["started"].items():  # the model trained on is the one the server aggregates onto
            assert same(model, entry["start"]), (r, node)
        # Bytes are counted per node, as sent.
        assert stats.downlink_bytes_sent == [entry["sent"][n] for n in stats.sampled_nodes]
        assert stats.downlink_bytes == sum(entry["sent"].values())
    first = log[0]["sent"]
    assert set(first.values()) == {dense}  # nobody held a model yet (initial = dense)
    r2 = log[1]["sent"]
    # Round 2: nodes 0 and 1 hold version 0 and get one step; node 3 is new and gets the model dense.
    assert r2[NODES[0]] == r2[NODES[1]] < dense / 5 and r2[NODES[3]] == dense
    r5 = log[4]["sent"]
    # Round 5: node 0 was in round 4 (one step), node 3 last in round 2 (three steps), node 4 in round 4.
    assert r5[NODES[0]] == r5[NODES[4]] < r5[NODES[3]] < dense
    assert strategy.channel.version == 5


def test_a_node_that_lost_its_model_fails_once_and_then_gets_the_model_dense():
    strategy = wrapper()
    ctxs = contexts()
    mod = CompressionMod()
    state, _ = federate(strategy, mod, ctxs, rounds=2)
    ctxs[NODES[0]].state = type(ctxs[NODES[0]].state)()  # the device was reset: it holds nothing now
    SCHEDULE_COPY = dict(SCHEDULE)
    try:
        SCHEDULE.update({1: [0, 1], 2: [0, 1]})
        log = []
        for r in (1, 2):
            messages = list(strategy.configure_train(r + 2, ArrayRecord(state), ConfigRecord(), FEDERATION.grid))
            sent = {int(m.metadata.dst_node_id): len(payload_from(m.content)) for m in messages}
            replies = [deliver(mod, m, ctxs[int(m.metadata.dst_node_id)], local_train) for m in messages]
            arrays, _ = strategy.aggregate_train(r + 2, replies)
            log.append((sent, strategy.take_round_stats()))
            state = OrderedDict(arrays.to_torch_state_dict())
    finally:
        SCHEDULE.clear()
        SCHEDULE.update(SCHEDULE_COPY)
    (sent3, stats3), (sent4, stats4) = log
    assert [f.node_id for f in stats3.failures] == [NODES[0]]
    assert "holds no model" in stats3.failures[0].reason
    assert sent4[NODES[0]] == len(strategy.channel.dense()) and stats4.failures == []  # dense (its CRC in decimal)
    assert sent4[NODES[1]] < sent4[NODES[0]]


def test_seeded_start_sends_no_model_and_a_client_with_another_round_0_model_is_refused():
    right = CompressionMod(initial_model=lambda msg, ctx: initial_state(0))
    strategy = wrapper(clients_build_initial_model=True)
    _, log = federate(strategy, right, contexts(), rounds=2)
    dense = strategy.channel.dense_size
    assert max(log[0]["sent"].values()) < 200  # round 1: a change of no steps from the round-0 model
    assert log[1]["sent"][NODES[3]] < dense / 5  # a new node gets the change since round 0
    assert all(e["stats"].failures == [] for e in log)

    wrong = CompressionMod(initial_model=lambda msg, ctx: initial_state(1))  # another seed
    strategy = wrapper(clients_build_initial_model=True)
    _, log = federate(strategy, wrong, contexts(), rounds=2)
    assert len(log[0]["stats"].failures) == 3
    assert "round-0 model this client builds differs" in log[0]["stats"].failures[0].reason
    assert log[1]["sent"][NODES[0]] == dense and log[1]["stats"].failures[0].node_id == NODES[3]


def test_server_error_feedback_brings_the_clients_model_to_a_fixed_global_model():
    """The change sent is w − R, so what top-k left out goes out later: R reaches w (EF, Karimireddy et al. 2019)."""
    specs = ARCH.specs(())
    limits = DecodeLimits.for_specs([s for s in specs if s.dtype.is_floating_point])
    topk = UPDATE_COMPRESSORS.get("topk")
    channel = DownlinkChannel(topk(topk.Params(density=0.1)), limits)
    w0, w = initial_state(0), initial_state(1)
    channel.advance(1, w0, first_round_of_run=True)
    gaps = []
    for r in range(2, 16):
        reference = channel.advance(r, w, first_round_of_run=False)
        gaps.append(max((reference[k].float() - w[k].float()).abs().max().item() for k in w))
    assert gaps[0] > 0.1 and gaps[-1] < 1e-6
    assert all(b <= a for a, b in zip(gaps, gaps[1:], strict=False))


def catch_up() -> tuple[bytes, Held, object]:
    specs = ARCH.specs(())
    limits = DecodeLimits.for_specs([s for s in specs if s.dtype.is_floating_point])
    qsgd = UPDATE_COMPRESSORS.get("qsgd")
    channel = DownlinkChannel(qsgd(qsgd.Params(levels=4)), limits)
    start = channel.advance(1, initial_state(0), first_round_of_run=True)
    held = Held(OrderedDict(start), 0, model_crc(start))
    for r in (2, 3):
        channel.advance(r, initial_state(r), first_round_of_run=False)
    channel.versions[7] = 0
    payload = channel.payload_for(7, channel.dense())
    return payload, held, channel


def test_a_catch_up_decodes_to_the_servers_model_and_hostile_ones_are_refused():
    payload, held, channel = catch_up()
    codec = channel.compressor
    got = apply_change(payload, held, ARCH, codec, 1e6, None)
    assert got.version == 2 and same(got.state, channel.reference)
    wrong_base = dataclasses.replace(held, version=1)
    with pytest.raises(DecodeError, match="holds version 1"):
        apply_change(payload, wrong_base, ARCH, codec, 1e6, None)
    drifted = Held(OrderedDict((k, v + 1e-3 if v.is_floating_point() else v) for k, v in held.state.items()), 0, 1)
    with pytest.raises(DecodeError, match="CRC"):
        apply_change(payload, drifted, ARCH, codec, 1e6, None)
    for bad in (payload[: len(payload) // 2], payload[:40] + bytes([payload[40] ^ 1]) + payload[41:], b"", b"x" * 64):
        with pytest.raises(DecodeError):
            apply_change(bad, held, ARCH, codec, 1e6, None)
    other = UPDATE_COMPRESSORS.get("topk")
    with pytest.raises(DecodeError, match="made by 'qsgd'"):
        apply_change(payload, held, ARCH, other(other.Params()), 1e6, None)


def test_downlink_settings_are_checked_before_anything_runs():
    base = {"model": {"name": "mlp"}, "downlink": {"name": "surp", "density": 0.05}}
    cfg = config_from_dict(base)
    assert cfg.downlink.name == "surp" and cfg.downlink.initial == "seed" and cfg.downlink.params == {"density": 0.05}
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="server_compression 'lc' compresses the broadcast"):
        config_from_dict({**base, "server_compression": {"name": "lc"}})
    config_from_dict({**base, "server_compression": {"name": "udfc", "final_only": True}})  # the final model only
    with pytest.raises(ConfigError, match="downlink.error_feedback = false"):
        config_from_dict({**base, "downlink": {"name": "topk", "error_feedback": False}})
    with pytest.raises(ConfigError, match="downlink.initial"):
        config_from_dict({**base, "downlink": {"name": "topk", "initial": "zeros"}})
    with pytest.raises(ConfigError, match="downlink.name"):
        config_from_dict({**base, "downlink": {"name": "nope"}})
    with pytest.raises(TransportError, match="compresses the broadcast"):
        CompressedStrategy(FedAvg(), arch=ARCH, server_compression="lc", downlink="topk")


def test_the_old_names_of_the_two_downlink_compressors_are_refused_with_their_new_names():
    """``downlink`` was the model compressor in code and ``downlink_update`` the change's; now ``server_compression``
    and ``downlink``, as in the config. An old spelling is an error naming the new one, never read the new way."""
    with pytest.raises(TypeError, match=r"downlink_update is now downlink \(the compressor of the model's change\)"):
        CompressedStrategy(FedAvg(), arch=ARCH, downlink_update="topk")
    with pytest.raises(TypeError, match="downlink_update_params is now downlink_params"):
        CompressedStrategy(FedAvg(), arch=ARCH, downlink="topk", downlink_update_params={"density": 0.1})
    with pytest.raises(TypeError, match="unexpected keyword argument 'dowlink'"):
        CompressedStrategy(FedAvg(), arch=ARCH, dowlink="topk")
    for name in sorted(set(MODEL_COMPRESSORS) - set(UPDATE_COMPRESSORS)):  # "identity" means none in both
        with pytest.raises(TransportError, match=f"server_compression='{name}' now"):
            CompressedStrategy(FedAvg(), arch=ARCH, downlink=name)
    with pytest.raises(ConfigError, match=r"downlink.name.*server_compression='lc' now \(\[server_compression\]"):
        config_from_dict({"model": {"name": "mlp"}, "downlink": {"name": "lc"}})
    with pytest.raises(ConfigError, match=r"'downlink_update' \(did you mean 'downlink'\?\)"):
        config_from_dict({"model": {"name": "mlp"}, "downlink_update": {"name": "topk"}})


def test_transport_settings_from_an_older_peer_are_refused_naming_the_new_keys():
    """The settings' JSON once carried the model compressor as ``downlink`` and the change's as ``downlink_update``:
    read now, that ``downlink`` would be taken for the change's compressor, so the message is refused."""
    current = json.loads(Transport(server_compression="lc", downlink="identity").to_json())
    assert current["server_compression"]["name"] == "lc" and current["downlink"] == {"name": "identity"}
    old = {k: v for k, v in current.items() if k != "server_compression"}
    older = {**old, "downlink": current["server_compression"]}  # older fedcomp: no downlink_update key at all
    with pytest.raises(TransportError, match="lack 'server_compression': the model compressor is server_compression"):
        Transport.from_json(json.dumps(older))
    with pytest.raises(
        TransportError, match=r"downlink_update is now downlink \(the compressor of the model's change\)"
    ):
        Transport.from_json(json.dumps({**older, "downlink_update": {"name": "topk", "density": 0.1}}))
    assert Transport.from_json(json.dumps(current)) == Transport(server_compression="lc")


def test_a_simulation_with_a_compressed_downlink_records_each_clients_bytes(tmp_path):
    import fedcomp
    from fedcomp.compressors.model.base import dense_payload
    from fedcomp.models import initial_model
    from tests.conftest import small_config

    cfg = small_config(
        tmp_path,
        federation={"num_clients": 4, "rounds": 4, "fraction_train": 0.5, "min_train_clients": 2},
        client={"local_steps": 3},
        uplink={"name": "topk"},
        downlink={"name": "topk", "density": 0.05},
    )
    rows = fedcomp.run(cfg, progress=False).rows
    model = initial_model(config_from_dict(cfg), (1, 28, 28), 10)
    dense = len(dense_payload("identity", OrderedDict(model.state_dict())))  # what a plain run sends each client
    for row in rows:
        assert row["failed_clients"] == 0
        sent = row["downlink_bytes_sent_per_client"]
        assert row["downlink_bytes"] == sum(sent) and len(sent) == row["sampled_clients"] == 2
        assert sorted(row["downlink_bytes_received_per_client"]) == sorted(sent)  # what the clients measured
        assert max(sent) < dense / 4  # seeded start: nobody needs the model dense
    assert sum(r["downlink_bytes"] for r in rows) < 4 * 2 * dense / 10
    assert 0.0 < rows[-1]["test_accuracy"] <= 1.0
    # Both models are recorded: the server's w (test_accuracy) and the clients' R, which lags it.
    last = rows[-1]["server_metrics"]
    assert 0.0 < last["client_model_accuracy"] <= 1.0
    assert rows[0]["server_metrics"]["downlink_residual_norm"] == 0.0 < last["downlink_residual_norm"]


@pytest.mark.parametrize("name", sorted(UPDATE_COMPRESSORS))
def test_every_update_compressor_carries_the_change_and_the_client_rebuilds_the_same_model(name):
    """Three steps and a catch-up from version 0 with each codec: the bits a client rebuilds are the server's."""
    specs = ARCH.specs(())
    limits = DecodeLimits.for_specs([s for s in specs if s.dtype.is_floating_point])
    channel = DownlinkChannel(update_compressor(name, seed=3, section="downlink"), limits)
    start = channel.advance(1, initial_state(0), first_round_of_run=True)
    held = Held(OrderedDict(start), 0, model_crc(start))
    for r in (2, 3, 4):
        channel.advance(r, initial_state(r), first_round_of_run=False)
    channel.versions[1] = 0
    payload = channel.payload_for(1, channel.dense())
    if name == "identity":  # three dense changes weigh more than the model: the model goes instead
        assert payload == channel.dense()
        return
    got = apply_change(payload, held, ARCH, update_compressor(name, seed=3, section="downlink"), 1e6, None)
    assert got.version == 3 and same(got.state, channel.reference)


def test_the_server_keeps_only_the_steps_a_catch_up_can_still_use(monkeypatch):
    import fedcomp.flower.downlink as downlink

    monkeypatch.setattr(downlink, "MAX_CATCH_UP_STEPS", 3)  # bounded however small the steps are
    specs = ARCH.specs(())
    limits = DecodeLimits.for_specs([s for s in specs if s.dtype.is_floating_point])
    topk = UPDATE_COMPRESSORS.get("topk")
    channel = DownlinkChannel(topk(topk.Params(density=0.01)), limits)
    channel.advance(1, initial_state(0), first_round_of_run=True)
    for r in range(2, 9):
        channel.advance(r, initial_state(r), first_round_of_run=False)
    assert sorted(channel.steps) == [5, 6, 7] and min(channel.base_crcs) == 4
    channel.versions.update({1: 3, 2: 4})
    dense = channel.dense()
    assert channel.payload_for(1, dense) == dense and channel.payload_for(2, dense) != dense


@pytest.mark.parametrize(
    "lie, says",
    [
        ({"steps": [5]}, "step lengths for versions"),  # two steps declared by the versions, one length
        ({"steps": [-4, 10**6]}, "step lengths for versions"),
        ({"base": 2, "version": 1}, "step lengths for versions"),
        ({"steps": [1, 1]}, "steps hold 2 bytes"),  # lengths that do not add up to the body
        ({"version": "two"}, "malformed params"),
        ({"codec": "dgc"}, "made by 'dgc'"),
        ({"crc": 12345}, "the server's 0x00003039"),
    ],
)
def test_a_catch_up_whose_params_lie_under_a_valid_checksum_is_refused(lie, says):
    from fedcomp.coding import pack, unpack

    payload, held, channel = catch_up()
    parsed = unpack(payload, DecodeLimits(expected=None, max_tensors=10))
    forged = pack(parsed.codec, {**parsed.params, **lie}, parsed.specs, parsed.body)  # a fresh, valid CRC
    with pytest.raises(DecodeError, match=says):
        apply_change(forged, held, ARCH, channel.compressor, 1e6, None)


def test_the_server_aggregates_onto_its_own_model_so_what_the_downlink_left_out_is_carried():
    """w_{t+1} = w_t + Σ nᵢΔᵢ / Σ nᵢ, with w_t the server's model, not R_t (the clients'): aggregating onto R_t
    would drop w_t − R_t every round, and the downlink's error feedback would not exist (docs/downlink.md)."""
    strategy = wrapper()  # top-k 10 % for the change, top-k for the updates
    ctxs, mod = contexts(), CompressionMod()
    uplink = UPDATE_COMPRESSORS.get("topk")(UPDATE_COMPRESSORS.get("topk").Params())  # decodes independently
    state = initial_state()
    gaps = []
    for r in range(1, 6):
        messages = list(strategy.configure_train(r, ArrayRecord(state), ConfigRecord(), FEDERATION.grid))
        clients_hold = OrderedDict(strategy.channel.reference)
        replies = [deliver(mod, m, ctxs[int(m.metadata.dst_node_id)], local_train) for m in messages]
        expected, total = {k: v.clone() for k, v in state.items()}, 0
        counts = [int(m.content[METRICS_KEY]["num-examples"]) for m in replies]
        for reply, n in zip(replies, counts, strict=True):
            for k, delta in uplink.decode(payload_from(reply.content), strategy.update_limits).items():
                expected[k] = expected[k] + n * delta / sum(counts)
            total += n
        arrays, _ = strategy.aggregate_train(r, replies)
        stats = strategy.take_round_stats()
        assert stats.failures == []
        got = arrays.to_torch_state_dict()
        for k in state:
            assert torch.allclose(got[k].float(), expected[k].float(), atol=1e-6), (r, k)
        gap = sum(float((state[k] - v).square().sum()) for k, v in clients_hold.items()) ** 0.5
        assert stats.server_metrics["downlink_residual_norm"] == pytest.approx(gap, rel=1e-6)
        assert stats.client_model is not None and same(stats.client_model, clients_hold)
        gaps.append(gap)
        state = OrderedDict(got)
    assert gaps[0] == 0 and all(g > 1e-3 for g in gaps[1:])  # w ≠ R from round 2: there is a residual to carry


def test_a_catch_up_longer_than_the_cap_is_refused_before_any_step_is_decoded(monkeypatch):
    """1,000 forged steps cost a ResNet-18 client 100–140 s on main; now refused at once (a few dense decodes
    at most: MAX_CATCH_UP_STEPS)."""
    import time

    import fedcomp.flower.downlink as downlink
    from fedcomp.coding import pack, unpack

    payload, held, channel = catch_up()  # a genuine 2-step catch-up
    parsed = unpack(payload, DecodeLimits(expected=None, max_tensors=10))
    steps = downlink.MAX_CATCH_UP_STEPS + 1
    one = parsed.body[len(parsed.body) - parsed.params["steps"][-1] :]  # a genuine step's bytes, repeated
    body = parsed.body[: len(parsed.body) - sum(parsed.params["steps"])] + one * steps
    forged = pack(parsed.codec, {**parsed.params, "version": steps, "steps": [len(one)] * steps}, parsed.specs, body)
    decoded = []
    monkeypatch.setattr(channel.compressor, "decode", lambda *a, **k: decoded.append(1))
    t0 = time.perf_counter()
    with pytest.raises(DecodeError, match=f"{steps} steps, more than the {steps - 1}"):
        apply_change(forged, held, ARCH, channel.compressor, 1e6, None)
    assert decoded == [] and time.perf_counter() - t0 < 1.0


def test_steps_each_within_the_bound_cannot_add_up_beyond_it():
    """Three steps of +999,000 on one weight, each within max_abs_value = 1e6 and with a correct CRC: the model
    they build (2,997,000) is refused (main: 1,000 such steps gave 9.99e8, accepted)."""
    specs = ARCH.specs(())
    limits = DecodeLimits.for_specs([s for s in specs if s.dtype.is_floating_point])
    topk = UPDATE_COMPRESSORS.get("topk")
    channel = DownlinkChannel(topk(topk.Params(density=0.001)), limits)
    start = channel.advance(1, initial_state(0), first_round_of_run=True)
    held = Held(OrderedDict(start), 0, model_crc(start))
    model = OrderedDict((k, v.clone()) for k, v in start.items())
    first = next(k for k, v in model.items() if v.is_floating_point())
    for r in (2, 3, 4):
        model[first].view(-1)[0] += 999_000.0
        channel.advance(r, model, first_round_of_run=False)
    channel.versions[7] = 0
    payload = channel.payload_for(7, channel.dense())
    assert payload != channel.dense()  # a catch-up of three steps
    got = apply_change(payload, held, ARCH, channel.compressor, 1e7, None)  # a receiver allowing 1e7 takes it
    assert float(got.state[first].abs().max()) > 2.9e6
    with pytest.raises(DecodeError, match=f"{first!r} has values that are not finite or exceed"):
        apply_change(payload, held, ARCH, channel.compressor, 1e6, None)
