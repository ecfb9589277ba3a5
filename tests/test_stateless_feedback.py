"""Stateless error feedback (``[uplink] error_feedback = "aggregate"``, CAFe): the previous round's aggregate is
every client's predictor, the server adds it back, clients keep nothing.

Two kinds of test. The building blocks (the wrapper's ``configure_train`` → the client mod → its
``aggregate_train``, real Flower messages and real payloads, as tests/test_flower_building_blocks.py) check the
arithmetic exactly; whole runs through Flower's message path in this process (``simulation.backend =
"in-process"``) check what a run leaves behind: no client state, the predictor's bytes in the rows, a resume.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

import fedcomp
from fedcomp.coding import DecodeLimits, TensorSpec
from fedcomp.compressors.model.structure import Architecture
from fedcomp.compressors.update import UPDATE_COMPRESSORS
from fedcomp.compressors.update.base import NoParams
from fedcomp.compressors.update.identity import IdentityCompressor
from fedcomp.config import ConfigError, config_from_dict
from fedcomp.flower import CompressedStrategy, CompressionMod, NormBound
from fedcomp.flower.predictor import PREDICTOR_KEY, PredictorError, predictor_record
from fedcomp.flower.state import UPLINK_STATE_KEY
from fedcomp.flower.strategy import PREDICTOR_STATE
from fedcomp.messages import payload_from
from fedcomp.servers.recorder import load_checkpoint
from tests.conftest import small_config
from tests.flower_grid import InMemoryFederation

ARCH = Architecture("mlp", (1, 4, 4), 3)
FEDERATION = InMemoryFederation(4)
NODES = FEDERATION.node_ids
AGGREGATE = {"error_feedback": "aggregate"}


def contexts(state_dir=None) -> dict[int, Context]:
    config = lambda i: {"partition-id": i, "num-partitions": len(NODES)}  # noqa: E731
    return {
        node: Context(
            run_id=1,
            node_id=node,
            state=RecordDict(),
            run_config={},
            node_config={**config(i), **({"state-dir": str(state_dir / f"node{i}")} if state_dir else {})},
        )  # fmt: skip
        for i, node in enumerate(NODES)
    }


def initial_state() -> OrderedDict[str, torch.Tensor]:
    torch.manual_seed(0)
    return OrderedDict(ARCH.build().state_dict())


def floats(state) -> list[TensorSpec]:
    return [TensorSpec(k, tuple(v.shape), torch.float32) for k, v in state.items() if v.is_floating_point()]


def noisy_train(msg: Message, context: Context) -> Message:
    """Each client moves every weight by seeded noise of its own (a different update per client and round)."""
    state = msg.content["arrays"].to_torch_state_dict()
    pid = int(context.node_config["partition-id"])
    gen = torch.Generator().manual_seed(1000 * pid + int(msg.content["config"]["server-round"]))
    trained = OrderedDict((k, v + 0.05 * torch.randn(v.shape, generator=gen)) for k, v in state.items())
    metrics = MetricRecord({"num-examples": 10 * (pid + 1), "train_loss": 1.0})
    return Message(RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics}), reply_to=msg)


def run_round(strategy, server_round, state, ctxs, train=noisy_train):
    """configure_train → the mod on each node → aggregate_train; returns the new state and, per node, the predictor
    payload its message carried and its reply's payload."""
    messages = list(strategy.configure_train(server_round, ArrayRecord(state), ConfigRecord(), FEDERATION.grid))
    predictors, replies = {}, []
    for m in messages:
        node = int(m.metadata.dst_node_id)
        if PREDICTOR_KEY in m.content.array_records:  # read before the mod turns the message into a plain one
            predictors[node] = bytes(m.content.array_records[PREDICTOR_KEY][PREDICTOR_KEY].data)
        replies.append(CompressionMod()(m, ctxs[node], train))
    uplink = {int(r.metadata.src_node_id): payload_from(r.content) for r in replies if not r.has_error()}
    arrays, _ = strategy.aggregate_train(server_round, replies)
    return OrderedDict(arrays.to_torch_state_dict()), predictors, uplink


def wrapper(uplink_params: dict, name: str = "topk") -> CompressedStrategy:
    return CompressedStrategy(FedAvg(), arch=ARCH, uplink=name, uplink_params=uplink_params, num_partitions=len(NODES))


def capture_reconstructions(strategy) -> list[tuple[bytes, dict[str, torch.Tensor]]]:
    """(payload, what the uplink's server end hands on) for every reply, in the order decoded (copies: a norm
    bound clips the updates in place later)."""
    seen: list[tuple[bytes, dict[str, torch.Tensor]]] = []
    real = strategy.receiver.decode

    def decode(payload: bytes) -> dict[str, torch.Tensor]:
        update = real(payload)
        seen.append((payload, {k: v.clone() for k, v in update.items()}))
        return update

    strategy.receiver.decode = decode
    return seen


@pytest.mark.usefixtures("task_identity")
def test_the_server_reconstructs_each_update_as_its_payload_decoded_plus_the_predictor_it_sent():
    """Round 2: every message carries the same predictor, the weighted mean of round 1's reconstructed updates;
    each reply's update, as the wrapper hands it on, is exactly D(payload) + predictor, with D a fresh top-k
    decoder and the predictor decoded here from the message's own bytes; FedAvg averages those."""
    strategy, ctxs, state = wrapper({"density": 0.05, **AGGREGATE}), contexts(), initial_state()
    seen = capture_reconstructions(strategy)
    state1, first, uplink1 = run_round(strategy, 1, state, ctxs)
    limits = DecodeLimits.for_specs(floats(state))
    for payload in first.values():  # round 1: the predictor is zero
        assert all(not v.any() for v in IdentityCompressor().decode(payload, limits).values())
    weight = {node: 10 * (i + 1) for i, node in enumerate(NODES)}
    sender = {payload: node for node, payload in uplink1.items()}
    round1 = {sender[p]: u for p, u in seen}
    seen.clear()

    state2, second, uplink2 = run_round(strategy, 2, state1, ctxs)
    assert len(set(second.values())) == 1 and set(second) == set(NODES)  # one predictor, to every node
    predictor = IdentityCompressor().decode(next(iter(second.values())), limits)
    total = sum(weight.values())
    for name, value in predictor.items():  # the weighted mean of round 1's reconstructions (= decoded, P was 0)
        mean = sum(weight[n] * round1[n][name].double() for n in NODES) / total
        assert torch.allclose(value.double(), mean, rtol=1e-6, atol=1e-9), name
        assert value.abs().sum() > 0
    topk = UPDATE_COMPRESSORS.get("topk")
    fresh = topk(topk.parse_params({"density": 0.05}, "uplink"))
    node_of = {payload: node for node, payload in uplink2.items()}
    assert sorted(node_of[p] for p, _ in seen) == sorted(NODES)  # one reconstruction per reply
    for payload, reconstructed in seen:
        expected = {k: v + predictor[k] for k, v in fresh.decode(payload, limits).items()}
        assert list(reconstructed) == list(expected)
        assert all(torch.equal(reconstructed[k], expected[k]) for k in expected)  # exactly, bit for bit
    # FedAvg's aggregate is the weighted mean of the reconstructed updates.
    recon = {node_of[p]: u for p, u in seen}
    for name in predictor:
        mean = sum(weight[n] * recon[n][name].double() for n in NODES) / total
        assert torch.allclose((state2[name].double() - state1[name].double()), mean, atol=1e-6), name
    stats = strategy.take_round_stats()
    assert stats.skipped is None and stats.failures == []


# A constructed problem where the clients' updates are nearly the same every round: a dense update with a spread
# of magnitudes (most of the energy outside any 1%), plus a small difference per client.
_GEN = torch.Generator().manual_seed(7)
_DECAY = {k: torch.exp(-5.0 * torch.rand(s.shape, generator=_GEN)) for k, s in ((s.name, s) for s in floats(initial_state()))}  # fmt: skip
BASE = {k: d * torch.randn(d.shape, generator=_GEN) for k, d in _DECAY.items()}
TARGETS = {
    pid: {k: v + 0.02 * torch.randn(v.shape, generator=_GEN) for k, v in BASE.items()} for pid in range(len(NODES))
}
TRUE_MEAN = {
    k: sum(10 * (pid + 1) * TARGETS[pid][k].double() for pid in TARGETS) / sum(10 * (p + 1) for p in TARGETS)
    for k in BASE
}


def fixed_train(msg: Message, context: Context) -> Message:
    """Client p's update is TARGETS[p], whatever the model and the round."""
    state = msg.content["arrays"].to_torch_state_dict()
    pid = int(context.node_config["partition-id"])
    trained = OrderedDict((k, v + TARGETS[pid][k]) for k, v in state.items())
    metrics = MetricRecord({"num-examples": 10 * (pid + 1), "train_loss": 1.0})
    return Message(RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics}), reply_to=msg)


def aggregate_errors(error_feedback, rounds: int) -> list[float]:
    """Each round's ‖applied update − true mean update‖ / ‖true mean update‖ under top-k at 1% (FedAvg)."""
    strategy, ctxs, state = wrapper({"density": 0.01, "error_feedback": error_feedback}), contexts(), initial_state()
    norm = math.sqrt(sum(float(v.square().sum()) for v in TRUE_MEAN.values()))
    errors = []
    for r in range(1, rounds + 1):
        new, _, _ = run_round(strategy, r, state, ctxs, train=fixed_train)
        step = {k: new[k].double() - state[k].double() for k in TRUE_MEAN}
        errors.append(math.sqrt(sum(float((step[k] - TRUE_MEAN[k]).square().sum()) for k in TRUE_MEAN)) / norm)
        state = new
    return errors


@pytest.mark.usefixtures("task_identity")
def test_with_top_k_at_one_percent_aggregate_feedback_gets_closer_to_the_true_mean_than_none():
    """Top-k at 1% is biased: without feedback each round's aggregate misses most of the mean update, round after
    round. With the previous aggregate as the predictor, each round sends the top 1% of what the predictor still
    misses, so the applied update approaches the true mean (the paper's claim, in a case where it must hold)."""
    rounds = 10
    none, aggregate = aggregate_errors(False, rounds), aggregate_errors("aggregate", rounds)
    assert aggregate[0] == pytest.approx(none[0], rel=1e-9)  # round 1: the predictor is zero, the same payloads
    assert min(none) > 0.8, none  # no feedback: most of the mean update missing, every round
    assert all(b < a for a, b in zip(aggregate, aggregate[1:], strict=False)), aggregate  # better each round
    assert aggregate[-1] < 0.6 * none[-1], (aggregate, none)


def norm(update) -> float:
    return math.sqrt(sum(float(v.double().square().sum()) for v in update.values()))


def round_two(bound: NormBound | None = None):
    """Two rounds of the constructed problem (top-k 1%, aggregate feedback), ``bound`` on the updates of round 2."""
    strategy, ctxs = wrapper({"density": 0.01, **AGGREGATE}), contexts()
    state1, _, _ = run_round(strategy, 1, initial_state(), ctxs, train=fixed_train)
    strategy.take_round_stats()
    strategy.judge.norm_bound = bound
    seen = capture_reconstructions(strategy)
    state2, _, uplink = run_round(strategy, 2, state1, ctxs, train=fixed_train)
    return strategy, state1, state2, seen, uplink


@pytest.mark.usefixtures("task_identity")
def test_the_update_norm_bound_sees_the_reconstructed_update_not_the_difference_sent():
    """In round 2 each difference a client sends (1% of what the predictor misses) is shorter than its update as
    reconstructed (the predictor plus that): a bound between the two clips every reconstructed update, and the
    step applied is the bound's length at most. (A bound applied to the differences would clip none.)"""
    _, _, _, seen, uplink = round_two()
    limits = DecodeLimits.for_specs(floats(initial_state()))
    topk = UPDATE_COMPRESSORS.get("topk")
    sent = [norm(topk(topk.parse_params({"density": 0.01}, "uplink")).decode(p, limits)) for p in uplink.values()]
    reconstructed = [norm(u) for _, u in seen]
    assert max(sent) < min(reconstructed), (sent, reconstructed)
    bound = (max(sent) + min(reconstructed)) / 2
    strategy, state1, state2, _, _ = round_two(NormBound("clip", factor=0, max_norm=bound))
    stats = strategy.take_round_stats()
    assert stats.server_metrics["update_norm_clipped"] == len(NODES) and stats.failures == []
    step = {k: state2[k].double() - state1[k].double() for k in TRUE_MEAN}
    assert norm(step) <= bound * (1 + 1e-5)


@pytest.mark.usefixtures("task_identity")
def test_clients_keep_no_state_in_aggregate_mode_while_residual_mode_does(tmp_path):
    """No file under any node's state-dir and nothing in Context.state with "aggregate"; the residual mode (true)
    writes a file per node per round (top-k's residual), in the same set-up."""
    for mode, where in (("aggregate", tmp_path / "aggregate"), (True, tmp_path / "residual")):
        on_disk, in_memory = contexts(where), contexts()
        a, b = wrapper({"density": 0.05, "error_feedback": mode}), wrapper({"density": 0.05, "error_feedback": mode})
        state_a = state_b = initial_state()
        for r in (1, 2):
            state_a, _, _ = run_round(a, r, state_a, on_disk)
            state_b, _, _ = run_round(b, r, state_b, in_memory)
        files = (
            sorted(p.relative_to(where).as_posix() for p in where.rglob("*") if p.is_file()) if where.exists() else []
        )
        held = [UPLINK_STATE_KEY in c.state for c in in_memory.values()]
        if mode == "aggregate":
            assert files == [] and not any(held), (files, held)
        else:
            assert sorted(f for f in files if f.endswith("round-2.pt")) == [
                f"node{i}/{i}/round-2.pt" for i in range(len(NODES))
            ]
            assert all(held)


@pytest.mark.usefixtures("task_identity")
def test_a_client_refuses_a_missing_or_unusable_predictor_before_training():
    """The predictor is untrusted input: no record, another record type, the wrong shape, NaN or a value beyond
    max_abs_value each fail the round for that client with a PredictorError saying what, and nothing is trained."""
    strategy, state = wrapper({"density": 0.05, **AGGREGATE}), initial_state()
    messages = list(strategy.configure_train(1, ArrayRecord(state), ConfigRecord(), FEDERATION.grid))
    specs = floats(state)
    wrong_shape = OrderedDict((s.name, torch.zeros(s.shape)) for s in specs[:-1])
    nan = OrderedDict((s.name, torch.full(s.shape, math.nan)) for s in specs)
    huge = OrderedDict((s.name, torch.full(s.shape, 1e7)) for s in specs)
    cases = {
        "carries no predictor": None,
        "stype": ArrayRecord(OrderedDict([(PREDICTOR_KEY, torch.zeros(3))])),  # floats, not fedcomp's bytes
        "unusable": predictor_record(IdentityCompressor().encode(wrong_shape).payload),
        "not finite": predictor_record(IdentityCompressor().encode(nan).payload),
        "1e+06": predictor_record(IdentityCompressor().encode(huge).payload),
    }
    trained = []
    for (why, record), msg in zip(cases.items(), [messages[0]] * len(cases), strict=True):
        content = RecordDict({k: v for k, v in msg.content.items() if k != PREDICTOR_KEY})
        if record is not None:
            content[PREDICTOR_KEY] = record
        forged = Message(content=content, dst_node_id=msg.metadata.dst_node_id, message_type=msg.metadata.message_type)
        with pytest.raises(PredictorError, match=re.escape(why)):
            CompressionMod()(forged, contexts()[NODES[0]], lambda m, c: trained.append(m) or noisy_train(m, c))
    assert trained == []


# ------------------------------------------------------------------ whole runs, Flower's message path in-process


def run_config(tmp_path, error_feedback, rounds: int, **federation) -> dict:
    return small_config(
        tmp_path,
        model={"name": "mlp"},
        data={"test_size": 300},
        federation={"rounds": rounds, "min_train_clients": 3, **federation},
        client={"local_steps": 5, "batch_size": 32},
        uplink={"name": "topk", "density": 0.01, "error_feedback": error_feedback},
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Top-k at 1% for 4 rounds with aggregate feedback (checkpoint every 2), and 2 rounds with a residual."""
    tmp = tmp_path_factory.mktemp("runs")
    aggregate = fedcomp.run(
        run_config(tmp, "aggregate", 4, checkpoint_every=2), run_dir=tmp / "aggregate", progress=False
    )
    residual = fedcomp.run(run_config(tmp, True, 2), run_dir=tmp / "residual", progress=False)
    return aggregate, residual


def test_a_run_with_aggregate_feedback_writes_no_client_state(runs):
    aggregate, residual = runs
    assert [r["failed_clients"] for r in aggregate.rows] == [0] * 4
    assert not list((aggregate.run_dir / "client_state").rglob("*.pt"))
    written = {f.parent.name for f in (residual.run_dir / "client_state").rglob("round-2.pt")}
    assert written == {"0", "1", "2"}  # the residual mode: a file per client


def test_the_predictors_bytes_are_in_the_downlink_bytes_of_every_row(runs):
    """Every train message carried the predictor: its bytes are in each client's downlink bytes as the server
    counted them and as the clients measured them, and on the wire; the model's broadcast is the residual run's."""
    aggregate, residual = runs
    previous = 0
    dense = residual.rows[0]["downlink_bytes_per_client"]  # the model, dense: the same broadcast in both runs
    assert {r["downlink_bytes_per_client"] for r in residual.rows} == {dense}
    assert all(r["predictor_downlink_bytes"] == 0 for r in residual.rows)
    for row in aggregate.rows:
        sampled = row["sampled_clients"]
        per_client, rest = divmod(row["predictor_downlink_bytes"], sampled)
        assert rest == 0 and per_client > 0
        assert row["downlink_bytes_sent_per_client"] == [dense + per_client] * sampled
        assert row["downlink_bytes_received_per_client"] == [dense + per_client] * len(row["clients"])
        assert row["downlink_bytes"] == (dense + per_client) * sampled
        wire = row["downlink_wire_bytes_sent_per_client"]
        mem_wire = residual.rows[min(row["round"], 2) - 1]["downlink_wire_bytes_sent_per_client"]
        assert min(wire) - max(mem_wire) > 0.8 * per_client  # the predictor was on the wire, in the same message
        if row["round"] == 1:  # zero, zstd'd: a few hundred bytes
            assert per_client < 0.01 * dense
        else:  # dense fp32, zstd'd: it fills in as sparse aggregates add up, towards the model's size
            assert previous < per_client < dense + 1024
        previous = per_client


def test_resume_restores_the_predictor(runs, tmp_path, monkeypatch):
    """A run stopped after round 2's checkpoint and resumed gives the rounds of the run that did not stop:
    the predictor came back from the checkpoint (a resume from zero would send different bytes in round 3)."""
    whole, _ = runs
    cfg = run_config(tmp_path, "aggregate", 4, checkpoint_every=2)
    real = CompressedStrategy.configure_train

    def crash_in_round_3(self, server_round, *args, **kwargs):
        if server_round + self.round_offset == 3:
            raise RuntimeError("stopped before round 3")
        return real(self, server_round, *args, **kwargs)

    monkeypatch.setattr(CompressedStrategy, "configure_train", crash_in_round_3)
    with pytest.raises(Exception, match="stopped before round 3"):
        fedcomp.run(cfg, run_dir=tmp_path / "cut", progress=False)
    monkeypatch.undo()
    checkpoint = load_checkpoint(tmp_path / "cut")
    assert checkpoint.round == 2
    saved = checkpoint.server[PREDICTOR_STATE]
    assert sum(float(v.abs().sum()) for v in saved.values()) > 0
    # Round 3 sends exactly this predictor: its payload's length is the row's count for each client.
    sent = IdentityCompressor(NoParams(lossless="zstd")).encode(saved).payload
    assert whole.rows[2]["predictor_downlink_bytes"] == len(sent) * whole.rows[2]["sampled_clients"]
    resumed = fedcomp.resume(tmp_path / "cut", progress=False)
    assert [r["round"] for r in resumed.rows] == [1, 2, 3, 4]
    for a, b in zip(whole.rows, resumed.rows, strict=True):
        assert a["predictor_downlink_bytes"] == b["predictor_downlink_bytes"], a["round"]
        assert a["uplink_bytes_per_client"] == b["uplink_bytes_per_client"]
        assert a["downlink_crc32"] == b["downlink_crc32"]
    final_whole = torch.load(whole.run_dir / "model.pt", weights_only=True)
    final_resumed = torch.load(resumed.run_dir / "model.pt", weights_only=True)
    assert all(torch.equal(final_whole[k], final_resumed[k]) for k in final_whole)


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("sections", "named"),
    [
        ({"uplink": {"name": "topk", "error_feedback": "agregate"}}, "uplink.error_feedback"),
        ({"uplink": {"name": "surp", "error_feedback": 1}}, "uplink.error_feedback"),
        ({"uplink": {"name": "dgc", "error_feedback": "aggregate"}}, "uplink.error_feedback"),
        ({"downlink": {"name": "topk", "error_feedback": "aggregate"}}, 'downlink.error_feedback = "aggregate"'),
    ],
)
def test_a_feedback_mode_that_cannot_run_is_refused_before_the_run_starts(tmp_path, sections, named):
    cfg = small_config(tmp_path, **sections)
    with pytest.raises(ConfigError, match=named) as refused:
        fedcomp.run(cfg, progress=False)
    assert not (tmp_path / "runs").exists()  # refused before a run directory exists
    if "agregate" in str(sections):
        text = str(refused.value)
        assert "'agregate'" in text and '"aggregate"' in text and "true" in text and "false" in text
        assert "did you mean 'aggregate'" in text


def test_every_codec_with_error_feedback_takes_aggregate_in_config_and_python_api():
    """The third value beside true and false, for every update compressor whose parameters have error_feedback
    (DGC refuses it: its accumulator is per-client state); the wrapper refuses a misspelling with a ConfigError."""
    takes = []
    for name in UPDATE_COMPRESSORS:
        cls = UPDATE_COMPRESSORS.get(name)
        if "error_feedback" not in {f for f in getattr(cls.Params, "__dataclass_fields__", {})} or name == "dgc":
            continue
        codec = cls(cls.parse_params(dict(AGGREGATE), "uplink"))
        assert codec.aggregate_feedback and not codec.error_feedback, name
        takes.append(name)
        config_from_dict({"uplink": {"name": name, **AGGREGATE}})
    assert {"topk", "surp", "qsgd", "powersgd", "quantized_ec", "signsgd", "eden"} <= set(takes)
    with pytest.raises(ConfigError, match="uplink.error_feedback"):
        wrapper({"error_feedback": "agregate"})
