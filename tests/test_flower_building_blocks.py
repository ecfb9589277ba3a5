"""fedcomp's compression as Flower building blocks: the client mod and the wrapper around Flower's strategies.

The messages are real Flower messages, the payloads real bytes encoded by
the mod and decoded by the wrapper, the strategies Flower's own. What
stands in for the network is the hand-over of a message from
``configure_train`` to the mod and of its reply to ``aggregate_train``; the
engine runs in the simulation tests (test_simulation_strategies.py).
"""

from __future__ import annotations

import copy
import io
from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg

from fedcomp.compressors.model.base import ProximalTerm
from fedcomp.compressors.model.structure import Architecture
from fedcomp.config import ConfigError, config_from_dict
from fedcomp.flower import CompressedStrategy, CompressionMod, TransportError, received_loss_term
from fedcomp.flower.transport import TRANSPORT_KEY
from fedcomp.messages import PAYLOAD_KEY, payload_from
from fedcomp.strategies import STRATEGIES, build_strategy
from tests.flower_grid import InMemoryFederation

pytestmark = pytest.mark.usefixtures("task_identity")  # tests/conftest.py: messages need a run and task id

ARCH = Architecture("mlp", (1, 4, 4), 3)
FEDERATION = InMemoryFederation(5)  # Flower's own grid: strategies ask it which nodes are connected
NODES = FEDERATION.node_ids


def contexts() -> dict[int, Context]:
    return {
        node: Context(
            run_id=1,
            node_id=node,
            node_config={"partition-id": i, "num-partitions": len(NODES)},
            state=RecordDict(),
            run_config={},
        )  # fmt: skip
        for i, node in enumerate(NODES)
    }


def local_train(msg: Message, context: Context) -> Message:
    """A train function written as Flower's quickstarts write them: arrays in, trained arrays and metrics out."""
    state = msg.content["arrays"].to_torch_state_dict()
    pid = int(context.node_config["partition-id"])
    gen = torch.Generator().manual_seed(1000 * pid + int(msg.content["config"]["server-round"]))
    trained = OrderedDict(
        (k, v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v) for k, v in state.items()
    )
    metrics = MetricRecord({"num-examples": 10 * (pid + 1), "train_loss": 1.0 + pid})
    return Message(RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics}), reply_to=msg)


def initial_state(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return OrderedDict(ARCH.build().state_dict())


def run_round(strategy, server_round: int, state, ctxs, mod=None, train=local_train):
    """configure_train → each node (through the mod, if any) → aggregate_train; returns the new state and the wire."""
    messages = list(strategy.configure_train(server_round, ArrayRecord(state), ConfigRecord(), FEDERATION.grid))
    replies, sent = [], {}
    for m in messages:
        node = int(m.metadata.dst_node_id)
        if PAYLOAD_KEY in m.content:
            sent[node] = len(payload_from(m.content))
        reply = mod(m, ctxs[node], train) if mod is not None else train(m, ctxs[node])
        replies.append(reply)
    uplink = {int(r.metadata.src_node_id): len(payload_from(r.content)) for r in replies if PAYLOAD_KEY in r.content}
    strategy.arrival_order = [int(r.metadata.src_node_id) for r in replies]
    arrays, _ = strategy.aggregate_train(server_round, replies)
    return OrderedDict(arrays.to_torch_state_dict()), sent, uplink


def strategy_params(name: str) -> dict:
    return {"qfedavg": {"client_learning_rate": 0.1}, "fedprox": {"proximal_mu": 0.1}}.get(name, {})


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_aggregates_real_payloads_through_the_wrapper(name):
    """SuRP up, LC down: every Flower strategy aggregates what the wrapper decoded; bytes are the payloads'."""
    cfg = config_from_dict({"model": {"name": "mlp"}, "strategy": {"name": name, **strategy_params(name)}})
    inner = build_strategy(cfg)
    strategy = CompressedStrategy(inner, arch=ARCH, uplink="surp", server_compression="lc", num_partitions=len(NODES))
    ctxs = contexts()
    start = initial_state()
    decoded = capture_decoded(strategy)
    terms = []

    def train(msg, context):  # LC's penalty reaches the train function with the broadcast
        terms.append(received_loss_term())
        return local_train(msg, context)

    state, sent, uplink = run_round(strategy, 1, start, ctxs, mod=CompressionMod(), train=train)
    assert len(terms) == len(NODES) and all(isinstance(t, ProximalTerm) and t.mu > 0 for t in terms)
    assert received_loss_term() is None  # only for the duration of the call
    stats = strategy.take_round_stats()
    assert stats.skipped is None and stats.failures == [], (stats.skipped, stats.failures)
    assert stats.clients == list(range(len(NODES)))
    # Bytes recorded are the payloads' lengths, both ways, and nothing else.
    assert stats.uplink_bytes == [uplink[n] for n in sorted(uplink, key=NODES.index)]
    assert set(sent.values()) == {stats.downlink_bytes_per_client} and len(sent) == len(NODES)
    assert stats.downlink_bytes == sum(sent.values())
    assert stats.uplink_bytes == stats.uplink_bytes_sent  # what each client measured before sending
    assert all(0 < b < 0.2 * 4 * sum(v.numel() for v in start.values()) for b in stats.uplink_bytes)
    # The model moved, stayed finite, kept its tensors and dtypes.
    assert list(state) == list(start) and all(state[k].dtype == start[k].dtype for k in start)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    if name == "fedmedian":
        # SuRP's updates are sparse: the coordinate-wise median is what Flower's FedMedian makes of them.
        for k in decoded[0]:
            stacked = torch.stack([strategy.global_state[k] + d[k] for d in decoded]).numpy()
            assert np.allclose(state[k].numpy(), np.median(stacked, axis=0), atol=1e-6), k
    else:
        assert any(not torch.equal(state[k], strategy.global_state[k]) for k in state)


def capture_decoded(strategy: CompressedStrategy) -> list[dict[str, torch.Tensor]]:
    """The updates the wrapper decodes, in the order it decodes them (the real decoder runs)."""
    decoded: list[dict[str, torch.Tensor]] = []
    real_decode = strategy.receiver.decode
    strategy.receiver.decode = lambda payload: decoded.append(real_decode(payload)) or decoded[-1]
    return decoded


def test_fedavg_through_the_wrapper_is_the_weighted_mean_of_the_decoded_updates():
    strategy = CompressedStrategy(FedAvg(), arch=ARCH, uplink="surp", num_partitions=len(NODES))
    ctxs = contexts()
    start = initial_state()
    decoded = capture_decoded(strategy)
    state, _, _ = run_round(strategy, 1, start, ctxs, mod=CompressionMod())
    # Replies are decoded in arrival order (the inner FedAvg's sampling shuffles the nodes): map them back.
    arrival = [NODES.index(n) for n in strategy.arrival_order]
    weights = np.array([10.0 * (p + 1) for p in arrival])
    for name, value in start.items():
        if not value.is_floating_point():
            assert torch.equal(state[name], value)
            continue
        mean = sum(w * d[name] for w, d in zip(weights, decoded, strict=True)) / weights.sum()
        assert torch.allclose(state[name], value + mean, atol=1e-6), name


EQUALITY_PARAMS = {"fedadam": {"eta": 0.05}, "fedavgm": {"server_learning_rate": 0.7, "server_momentum": 0.9}}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_the_wrapper_changes_the_transport_not_the_mathematics(name, monkeypatch):
    """Identity codecs both ways: every registered strategy through fedcomp = Flower's own with no fedcomp in the
    path, over three rounds (so the server's own state, FedAdam's moments or FedAvgM's momentum, counts too),
    built from the same config. Each client reports its own loss, so QFedAvg's loss weighting is compared."""
    # QFedAvg and Bulyan read arrays with keep_input=False, where Flower runs gc.collect() per array: ~15 s of a
    # test process's heap walks, and nothing to compare. Memory is not this test's subject.
    monkeypatch.setattr("gc.collect", lambda *args: 0)
    cfg = config_from_dict({"model": {"name": "mlp"}, "strategy": {"name": name, **EQUALITY_PARAMS.get(name, strategy_params(name))}})  # fmt: skip
    ctxs_plain, ctxs_wrapped = contexts(), contexts()
    plain, wrapped = build_strategy(cfg), CompressedStrategy(build_strategy(cfg), arch=ARCH, num_partitions=len(NODES))
    start = plain_state = wrapped_state = initial_state()
    for server_round in (1, 2, 3):
        plain_state, _, _ = run_round(plain, server_round, plain_state, ctxs_plain)
        wrapped_state, _, _ = run_round(wrapped, server_round, wrapped_state, ctxs_wrapped, mod=CompressionMod())
        stats = wrapped.take_round_stats()
        assert stats.skipped is None and stats.failures == [], (stats.skipped, stats.failures)
    for key in plain_state:
        assert torch.allclose(plain_state[key].float(), wrapped_state[key].float(), atol=1e-6, rtol=1e-5), key
    assert any(not torch.equal(wrapped_state[k], v) for k, v in start.items())


def test_with_a_state_dir_client_state_lives_in_files_only_and_gives_the_same_rounds(tmp_path):
    """Error feedback kept on disk (a node's state-dir) instead of Context.state: bit-identical rounds, and
    nothing of it in the Context that Flower keeps in memory for every node."""
    from fedcomp.flower.state import UPLINK_STATE_KEY

    in_memory, on_disk = contexts(), contexts()
    for i, ctx in enumerate(on_disk.values()):
        ctx.node_config["state-dir"] = str(tmp_path / f"node{i}")
    make = lambda: CompressedStrategy(FedAvg(), arch=ARCH, uplink="topk", uplink_params={"density": 0.2})  # noqa: E731
    a, b, state_a, state_b = make(), make(), initial_state(), initial_state()
    for r in (1, 2, 3):
        state_a, _, up_a = run_round(a, r, state_a, in_memory, mod=CompressionMod())
        state_b, _, up_b = run_round(b, r, state_b, on_disk, mod=CompressionMod())
        assert up_a == up_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert all(UPLINK_STATE_KEY in c.state for c in in_memory.values())  # top-k's residual, per node
    assert not any(UPLINK_STATE_KEY in c.state for c in on_disk.values())
    for i in range(len(NODES)):  # ... which is in that node's file of the last round instead
        saved = torch.load(tmp_path / f"node{i}" / str(i) / "round-3.pt", weights_only=True)
        held = in_memory[NODES[i]].state[UPLINK_STATE_KEY].to_torch_state_dict()
        assert saved.keys() == held.keys() and all(torch.equal(saved[k], held[k]) for k in saved)


def test_the_mod_parses_its_transport_settings_once_not_per_message(monkeypatch):
    """Every message carries the same settings string: the mod parses it (and builds its codecs) once, not
    JSON → object → JSON → object per message."""
    from fedcomp.flower import mod as mod_module
    from fedcomp.flower.transport import Transport

    parses = []
    real = Transport.from_json.__func__
    monkeypatch.setattr(Transport, "from_json", classmethod(lambda cls, text: parses.append(text) or real(cls, text)))
    mod_module._codecs.cache_clear()
    strategy = CompressedStrategy(FedAvg(), arch=ARCH, uplink="topk", uplink_params={"density": 0.5})
    state, ctxs = initial_state(), contexts()
    for r in (1, 2):
        state, _, _ = run_round(strategy, r, state, ctxs, mod=CompressionMod())
    assert parses == [strategy.transport.to_json()]  # ten messages, one parse


def test_strategy_state_checkpoints_so_a_restored_wrapper_continues_exactly():
    ctxs = contexts()
    a = CompressedStrategy(FedAdam(eta=0.05), arch=ARCH, uplink="topk", uplink_params={"density": 0.2})
    state = initial_state()
    for r in (1, 2):
        state, _, _ = run_round(a, r, state, ctxs, mod=CompressionMod())
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = CompressedStrategy(FedAdam(eta=0.05), arch=ARCH, uplink="topk", uplink_params={"density": 0.2})
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    ctxs_b = {n: Context(run_id=1, node_id=n, node_config=dict(c.node_config), state=copy.deepcopy(c.state),
                         run_config={}) for n, c in ctxs.items()}  # fmt: skip
    next_a, _, _ = run_round(a, 3, state, ctxs, mod=CompressionMod())
    next_b, _, _ = run_round(b, 3, state, ctxs_b, mod=CompressionMod())
    assert all(torch.equal(next_a[k], next_b[k]) for k in next_a)
    fresh = CompressedStrategy(FedAdam(eta=0.05), arch=ARCH, uplink="topk", uplink_params={"density": 0.2})
    ctxs_c = {n: Context(run_id=1, node_id=n, node_config=dict(c.node_config), state=copy.deepcopy(c.state),
                         run_config={}) for n, c in ctxs_b.items()}  # fmt: skip
    next_c, _, _ = run_round(fresh, 3, state, ctxs_c, mod=CompressionMod())
    assert any(not torch.equal(next_a[k], next_c[k]) for k in next_a)  # the moments matter: a fresh FedAdam differs


@pytest.mark.parametrize(
    ("name", "attrs"),
    [("fedadam", ("m_t", "v_t")), ("fedavgm", ("momentum_vector",))],
)
def test_a_changed_architecture_starts_the_inner_strategys_state_again_from_zero(name, attrs, caplog):
    """ALDS factorizes the model in round 2's broadcast: the state round 1 left (FedAdam's moments, FedAvgM's
    momentum) fits the old tensors only, so it starts again from zero, with a warning, and round 2 aggregates."""
    cfg = config_from_dict({"model": {"name": "mlp"}, "strategy": {"name": name, **EQUALITY_PARAMS[name]}})
    strategy = CompressedStrategy(build_strategy(cfg), arch=ARCH, server_compression="alds",
                                  server_compression_params={"compress_at": [2], "seeds": 1}, num_partitions=len(NODES))  # fmt: skip
    ctxs = contexts()
    state, _, _ = run_round(strategy, 1, initial_state(), ctxs, mod=CompressionMod())
    assert strategy.take_round_stats().skipped is None and all(getattr(strategy.inner, a) is not None for a in attrs)
    with caplog.at_level("WARNING", logger="fedcomp.flower.strategy"):
        state, _, _ = run_round(strategy, 2, state, ctxs, mod=CompressionMod())
    stats = strategy.take_round_stats()
    assert stats.skipped is None and stats.failures == [], (stats.skipped, stats.failures)
    assert strategy.structure != () and f"{', '.join(attrs)} start again from zero" in caplog.text
    floats = {k: tuple(v.shape) for k, v in state.items() if v.is_floating_point()}
    assert floats != {k: tuple(v.shape) for k, v in initial_state().items()}  # the tensors did change
    if name == "fedadam":  # one step from zero: m = (1 − β₁)Δ and v = (1 − β₂)Δ², so v = (1 − β₂)/(1 − β₁)² m²
        inner = strategy.inner
        assert {k: v.shape for k, v in inner.m_t.items()} == floats
        for k, m in inner.m_t.items():
            expected = (1 - inner.beta_2) / (1 - inner.beta_1) ** 2 * m.astype(np.float64) ** 2
            assert np.allclose(inner.v_t[k], expected, rtol=1e-4, atol=1e-12), k
    else:
        assert [v.shape for v in strategy.inner.momentum_vector] == list(floats.values())


def test_the_mod_leaves_other_messages_alone_and_names_what_a_train_function_got_wrong():
    ctx = contexts()[NODES[0]]
    plain = Message(
        RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=NODES[0], message_type=MessageType.TRAIN
    )
    seen = []
    CompressionMod()(plain, ctx, lambda m, c: seen.append(m) or local_train_noop(m))
    assert seen[0] is plain and "arrays" not in plain.content  # no transport settings: not the mod's message

    strategy = CompressedStrategy(FedAvg(), arch=ARCH)
    (msg, *_) = strategy.configure_train(1, ArrayRecord(initial_state()), ConfigRecord(), FEDERATION.grid)

    def two_records(m, c):
        arrays = m.content["arrays"]
        return Message(RecordDict({"a": arrays, "b": arrays, "metrics": MetricRecord({"num-examples": 1})}), reply_to=m)

    with pytest.raises(ValueError, match="exactly one ArrayRecord"):
        CompressionMod()(copy_message(msg), ctx, two_records)

    def wrong_shape(m, c):
        state = m.content["arrays"].to_torch_state_dict()
        name = next(k for k, v in state.items() if v.is_floating_point())
        state[name] = torch.zeros(7)
        return Message(
            RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({"num-examples": 1})}), reply_to=m
        )

    with pytest.raises(ValueError, match="came back with shape"):
        CompressionMod()(copy_message(msg), ctx, wrong_shape)
    with pytest.raises(ValueError, match="no model_fn"):
        bad = copy_message(msg)
        bad.content["config"][TRANSPORT_KEY] = str(bad.content["config"][TRANSPORT_KEY]).replace(
            '"model": {', '"model": null, "x": {'
        )
        CompressionMod()(bad, ctx, local_train)
    bad = copy_message(msg)
    bad.content["config"][TRANSPORT_KEY] = '{"uplink": {"name": "zip"}}'
    with pytest.raises(TransportError, match="malformed transport settings"):
        CompressionMod()(bad, ctx, local_train)


def local_train_noop(m: Message) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=m)


def copy_message(msg: Message) -> Message:
    return Message(metadata=copy.copy(msg.metadata), content=copy.deepcopy(msg.content))


def test_a_user_model_fn_is_all_the_mod_and_the_wrapper_need():
    """A Flower user's own model: no fedcomp registry name anywhere."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(6, 2)

    strategy = CompressedStrategy(FedAvg(), model_fn=Net, uplink="rtopk", uplink_params={"density": 0.5, "r_factor": 2})
    ctxs = contexts()
    torch.manual_seed(0)
    start = OrderedDict(Net().state_dict())
    state, sent, uplink = run_round(strategy, 1, start, ctxs, mod=CompressionMod(model_fn=Net))
    stats = strategy.take_round_stats()
    assert (
        stats.failures == [] and len(uplink) == len(NODES) and set(sent.values()) == {stats.downlink_bytes_per_client}
    )
    assert not torch.equal(state["fc.weight"], start["fc.weight"])
    with pytest.raises(TypeError, match="exactly one of model_fn"):
        CompressedStrategy(FedAvg())


def test_strategy_config_is_checked_before_anything_runs():
    with pytest.raises(ConfigError, match=r"strategy\.etaa.*fedadam.*'eta'"):
        config_from_dict({"strategy": {"name": "fedadam", "etaa": 0.1}})
    with pytest.raises(ConfigError, match=r"strategy\.name.*unknown name 'fedadamw'"):
        config_from_dict({"strategy": {"name": "fedadamw"}})
    with pytest.raises(ConfigError, match=r"strategy\.num_malicious_nodes': expected int"):
        config_from_dict({"strategy": {"name": "krum", "num_malicious_nodes": 0.5}})
    with pytest.raises(ConfigError, match=r"federation\.server_lr' was removed.*fedavgm.*server_learning_rate"):
        config_from_dict({"federation": {"server_lr": 0.5}})
    with pytest.raises(ConfigError, match="proximal_mu.*LC"):
        config_from_dict({"strategy": {"name": "fedprox", "proximal_mu": 0.1}, "server_compression": {"name": "lc"}})
    # QFedAvg's client learning rate is the clients' own unless set; Flower's names and defaults otherwise.
    cfg = config_from_dict({"client": {"lr": 0.02}, "strategy": {"name": "qfedavg", "q": 0.2}})
    inner = build_strategy(cfg)
    assert (type(inner).__name__, inner.client_learning_rate, inner.q) == ("QFedAvg", 0.02, 0.2)
    adam = build_strategy(config_from_dict({"strategy": {"name": "fedadam", "eta": 0.03, "beta_2": 0.9}}))
    assert (adam.eta, adam.beta_1, adam.beta_2, adam.fraction_evaluate) == (0.03, 0.9, 0.9, 0.0)


def test_flowers_dp_wrapper_composes_inside_the_compressed_transport():
    """Flower's server-side DP clipping around FedAvg, inside fedcomp's wrapper: updates clipped after decoding."""
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    clip = 0.05
    dp = DifferentialPrivacyServerSideFixedClipping(
        FedAvg(), noise_multiplier=0.0, clipping_norm=clip, num_sampled_clients=len(NODES)
    )
    strategy = CompressedStrategy(dp, arch=ARCH, uplink="topk", uplink_params={"density": 0.5})
    start = initial_state()
    state, _, _ = run_round(strategy, 1, start, contexts(), mod=CompressionMod())
    assert strategy.take_round_stats().failures == []
    moved = torch.cat([(state[k] - start[k]).flatten() for k in start if start[k].is_floating_point()])
    assert 0 < float(moved.norm()) <= clip + 1e-5  # a mean of updates each clipped to the norm


def test_an_adaptive_server_optimizer_with_sparse_updates_is_warned_about(caplog):
    """docs/own_code.md, 'Adaptive server optimizers': measured to stall (examples/flower_app, FedAdam + SuRP)."""
    from flwr.serverapp.strategy import FedAdam, FedAvgM

    with caplog.at_level("WARNING", logger="fedcomp.flower.strategy"):
        CompressedStrategy(FedAdam(), arch=ARCH, uplink="surp")
    assert "FedAdam with surp updates" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fedcomp.flower.strategy"):
        CompressedStrategy(FedAdam(), arch=ARCH, uplink="qsgd")  # dense: every coordinate every round
        CompressedStrategy(FedAvgM(), arch=ARCH, uplink="topk")
    assert caplog.text == ""
