"""Model compressors (server → client) on real models and real payloads, without Flower."""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from fedcomp.coding import ChecksumError, DecodeError, pack, specs_of
from fedcomp.compressors.model.alds import ALDSCompressor, ALDSLinear, ALDSParams, fold, recompose, true_error
from fedcomp.compressors.model.base import dense_bytes
from fedcomp.compressors.model.identity import IdentityModelCompressor
from fedcomp.compressors.model.lc import FormParams, GroupParams, LCCompressor, LCParams
from fedcomp.compressors.model.structure import Architecture, Edit, structure_from_json
from fedcomp.compressors.update.identity import IdentityCompressor
from fedcomp.config import ConfigError, config_from_dict
from fedcomp.flower.state import fit_state

LENET = Architecture("lenet5_caffe", (1, 28, 28), 10)
RESNET = Architecture("resnet20", (3, 32, 32), 10)
FAST = "tabulated"
"""ALDS's error kind where a test is about structures, payloads or checkpoints, not the allocation: the
default (exact) error costs seconds on LeNet-5's 500 × 800 classifier; test_alds.py checks it."""


def lenet_state(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return OrderedDict(LENET.build().state_dict())


def lc(variant: str, **kw) -> LCCompressor:
    groups = [
        GroupParams(["features.*"], [FormParams("quantize", k=4)]),
        GroupParams(["classifier.1.weight"], [FormParams("lowrank", rank=6), FormParams("prune", keep=0.01)]),
    ]
    return LCCompressor(LCParams(variant=variant, groups=groups, mu0=0.01, mu_growth=2.0, **kw), LENET)


def test_identity_broadcast_is_the_identity_codec_payload():
    state = lenet_state()
    b = IdentityModelCompressor(None, LENET).broadcast(1, state, ())
    assert b.payload == IdentityCompressor().encode(state).payload
    got = IdentityModelCompressor(None, LENET).decode(b.payload)
    assert got.structure == () and got.loss_term is None
    assert all(torch.equal(got.state[k], v) for k, v in state.items())


@pytest.mark.parametrize("variant", ["augmented_lagrangian", "quadratic_penalty", "compressed_start"])
def test_lc_broadcast_decodes_to_the_start_model_and_the_penalty_centre(variant):
    server, client = lc(variant), lc(variant)
    w = lenet_state()
    server.broadcast(1, w, ())  # direct compression
    server.end_of_round(1, w, (), last=False)  # one C step (and λ for the augmented Lagrangian)
    b = server.broadcast(2, w, ())
    got = client.decode(b.payload)
    # The client starts exactly where the server will add its update.
    assert all(torch.equal(got.state[k], b.start[k]) for k in w)
    mu = server.mu
    delta = server.delta
    if variant == "augmented_lagrangian":
        centre = {k: (delta[k].double() + server.lam[k] / mu).float() for k in delta}
        assert any(server.lam[k].abs().max() > 0 for k in delta)
    else:
        centre = delta
    if variant == "compressed_start":  # starts from Δ(Θ): compressed weights are Δ(Θ), the rest as they were
        assert all(torch.equal(got.state[k], delta[k]) for k in delta)
        assert torch.equal(got.state["features.0.bias"], w["features.0.bias"])
    else:
        assert all(torch.equal(got.state[k], w[k]) for k in w)
    model = LENET.build()
    model.load_state_dict(w)
    expected = 0.5 * mu * sum(float((w[k].double() - centre[k].double()).pow(2).sum()) for k in centre)
    assert float(got.loss_term(model).detach()) == pytest.approx(expected, rel=1e-5)

    dense = len(IdentityCompressor().encode(w).payload)
    compressed_numel = sum(w[k].numel() for k in delta)
    if variant == "augmented_lagrangian":  # w̄ and t both dense
        assert len(b.payload) == pytest.approx(dense + 4 * compressed_numel, abs=200)
    elif variant == "quadratic_penalty":  # w̄ dense plus Θ
        theta = sum(len(v) for v in server.theta_bytes.values())
        assert len(b.payload) == pytest.approx(dense + theta + 4 * len(delta), abs=200)
    else:
        assert len(b.payload) < dense / 10


def test_lc_delta_is_the_c_step_of_each_group():
    server = lc("quadratic_penalty")
    w = lenet_state()
    server.broadcast(1, w, ())
    for name in ("features.0.weight", "features.2.weight"):  # 4-entry codebooks
        assert torch.unique(server.delta[name]).numel() <= 4
    # Low rank + sparse corrections: Δ − corrections has rank ≤ 6, and at most 1% corrections.
    fc = server.delta["classifier.1.weight"].double()
    low, sparse = server.thetas["classifier.1.weight"]
    idx, _ = sparse
    assert idx.size <= math.ceil(0.01 * fc.numel())
    residual = fc.clone().reshape(-1)
    residual[torch.from_numpy(idx)] = 0
    low_dense = torch.from_numpy(low[0] @ low[1]).reshape(-1)
    residual_low = low_dense.clone()
    residual_low[torch.from_numpy(idx)] = 0
    assert torch.allclose(residual, residual_low.to(residual.dtype), atol=1e-6)
    assert torch.linalg.matrix_rank(torch.from_numpy(low[0] @ low[1])) <= 6
    # Uncompressed tensors are not touched.
    assert "features.0.bias" not in server.delta and "classifier.1.bias" not in server.delta


def test_lc_multiplier_step_and_mu_schedule():
    server = lc("augmented_lagrangian", rounds_per_step=2)
    w = lenet_state()
    server.broadcast(1, w, ())
    assert server.step == 0 and server.mu == pytest.approx(0.01)
    server.end_of_round(1, w, (), last=False)  # not due: R_L = 2
    assert server.step == 0 and not server.lam
    before = {k: v.clone() for k, v in server.delta.items()}
    snap = server.end_of_round(2, w, (), last=False)
    assert server.step == 1 and server.mu == pytest.approx(0.02)
    for k in server.delta:  # λ ← 0 − μ₀ (w − Δ(Θ)), Θ from the C step on w − λ/μ = w
        assert torch.allclose(server.lam[k], -0.01 * (w[k].double() - server.delta[k].double()))
    for k in before:  # λ was 0: the warm-started C step on the same w does not do worse (fp16 storage aside)
        err_before = float((w[k].double() - before[k].double()).norm())
        err_after = float((w[k].double() - server.delta[k].double()).norm())
        assert err_after <= err_before * (1 + 1e-3)
    assert not snap.is_global and snap.metrics["lc_step"] == 1
    assert all(torch.equal(snap.state[k], server.delta[k]) for k in server.delta)


def test_lc_reference_rounds_are_dense_without_penalty():
    server, client = lc("quadratic_penalty", start_round=3), lc("quadratic_penalty", start_round=3)
    w = lenet_state()
    b = server.broadcast(1, w, ())
    assert not server.active and client.decode(b.payload).loss_term is None
    snap = server.end_of_round(1, w, (), last=False)
    assert snap.is_global and snap.state is w
    # A run that ends before LC started still ends with Δ(Θ): the last round compresses.
    final = server.end_of_round(2, w, (), last=True)
    assert server.active and not final.is_global and final.payload is not None


def test_lc_final_payload_decodes_to_the_final_model_and_state_survives_a_checkpoint():
    server = lc("augmented_lagrangian")
    w = lenet_state()
    server.broadcast(1, w, ())
    w2 = OrderedDict((k, v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v) for k, v in w.items())
    snap = server.end_of_round(1, w2, (), last=True)
    got = lc("augmented_lagrangian").decode(snap.payload)
    assert all(torch.equal(got.state[k], snap.state[k]) for k in w)
    # A checkpointed compressor rebuilt from its state_dict broadcasts the same bytes.
    torch.save(server.state_dict(), buf := __import__("io").BytesIO())
    buf.seek(0)
    again = lc("augmented_lagrangian")
    again.load_state_dict(torch.load(buf, weights_only=True))
    assert again.broadcast(2, w2, ()).payload == server.broadcast(2, w2, ()).payload


def test_lc_groups_that_match_nothing_and_bad_forms_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no weight of the model matches"):
        LCCompressor(LCParams(groups=[GroupParams(["nothing.*"])]), LENET)
    with pytest.raises(ConfigError, match=r"server_compression.groups\[0\].forms\[0\].k"):
        config_from_dict({"server_compression": {"name": "lc", "groups": [{"forms": [{"form": "quantize", "k": 1}]}]}})
    with pytest.raises(ConfigError, match="server_compression.variant"):
        config_from_dict({"server_compression": {"name": "lc", "variant": "lagrange"}})
    with pytest.raises(ConfigError, match="server_compression.name"):
        config_from_dict({"server_compression": {"name": "zip"}})
    with pytest.raises(ConfigError, match="compress_at"):
        config_from_dict({"server_compression": {"name": "alds", "compress_at": [3, 2]}})


@pytest.mark.parametrize(
    "section, says",
    [
        ({"name": "alds", "compress_at": [2, 5]}, r"compress_at = \[5\] is after the last round \(4\)"),
        ({"name": "bwcp", "prune_at": [6]}, r"prune_at = \[6\] is after the last round"),
        ({"name": "bwcp", "prune_at": [2, 2]}, "names a round twice"),
        ({"name": "bwcp", "regularize_from": 5}, "regularize_from = 5 is after the last round"),
        ({"name": "lc", "start_round": 5}, "LC would never compress"),
        ({"name": "udfc", "start_round": 9}, "set final_only = true"),
    ],
)
def test_a_schedule_past_the_last_round_is_refused_before_the_run(section, says):
    base = {"model": {"name": "resnet20"}, "federation": {"rounds": 4}}
    with pytest.raises(ConfigError, match=says):
        config_from_dict({**base, "server_compression": section})
    at_the_end = {**section, **{k: [4] if isinstance(v, list) else 4 for k, v in section.items() if k != "name"}}
    config_from_dict({**base, "server_compression": at_the_end})  # the last round itself is fine


def test_a_bwcp_regularizer_that_starts_at_or_after_the_last_pruning_is_refused():
    base = {"model": {"name": "resnet20"}, "federation": {"rounds": 6}}
    for start in (4, 5):
        with pytest.raises(ConfigError, match=rf"regularize_from = {start} is not before the last pruning \(round 4\)"):
            config_from_dict(
                {**base, "server_compression": {"name": "bwcp", "prune_at": [2, 4], "regularize_from": start}}
            )
    config_from_dict({**base, "server_compression": {"name": "bwcp", "prune_at": [2, 4], "regularize_from": 3}})
    config_from_dict({**base, "server_compression": {"name": "bwcp", "regularize_from": 6}})  # final model only


def test_lc_damaged_broadcasts_raise_decode_errors_only():
    server = lc("compressed_start")
    w = lenet_state()
    payload = server.broadcast(1, w, ()).payload
    rng = np.random.default_rng(0)
    client = lc("compressed_start")
    # Corruption in transit is caught by the CRC (mutations behind a valid CRC: tests/test_hostile_payloads.py).
    for _ in range(100):
        data = bytearray(payload)
        for pos in rng.integers(0, len(data), 3):
            data[pos] ^= int(rng.integers(1, 256))
        with pytest.raises(ChecksumError):
            client.decode(bytes(data))
    # A well-framed container whose body is cut short is named as such.
    with pytest.raises(DecodeError, match=r"(?i)truncat|ends|short"):
        client.decode(pack("lc", {"phase": 3, "mu": 0.01}, specs_of(w), b"\x00" * 100, by_digest=True))
    got = client.decode(payload)  # the undamaged original still decodes, to the server's start model
    start = server.broadcast(1, w, ()).start
    assert all(torch.equal(got.state[k], start[k]) for k in start)


# ----------------------------------------------------------------------------- ALDS


def test_alds_linear_is_exact_at_full_rank():
    torch.manual_seed(0)
    lin = nn.Linear(24, 10)
    for k in (1, 2, 3):
        j = min(10, 24 // k)
        x = torch.randn(5, 24)
        assert torch.allclose(ALDSLinear(lin, k, j)(x), lin(x), atol=1e-5)


def test_alds_compression_meets_the_schedule_and_the_broadcast_rebuilds_the_model():
    params = ALDSParams(target=0.5, compress_at=[2, 4], seeds=3)
    server, client = ALDSCompressor(params, RESNET), ALDSCompressor(params, RESNET)
    torch.manual_seed(0)
    w = OrderedDict(RESNET.build().state_dict())
    assert server.broadcast(1, w, ()).structure == ()  # not a compression round
    b = server.broadcast(2, w, ())
    kept = b.metrics["alds_params_kept"]
    assert kept == pytest.approx(math.sqrt(0.5), abs=0.01)  # geometric schedule, step 1 of 2
    got = client.decode(b.payload)
    assert got.structure == b.structure and len(b.structure) > 0
    model = RESNET.build(got.structure)
    model.load_state_dict(got.state)
    decomposable = sum(m.weight.numel() for _, m in server.layers)
    now = sum(v.numel() for k, v in got.state.items() if ("encoder" in k or "decoder" in k) and "weight" in k)
    dense_rest = sum(m.weight.numel() for n, m in server.layers if not any(e.layer == n for e in got.structure))
    assert (now + dense_rest) / decomposable == pytest.approx(kept, abs=1e-9)
    assert len(b.payload) < len(IdentityCompressor().encode(w).payload) * 0.8
    # Step 2 works on the factorized model and reaches the final target within 1%.
    b2 = server.broadcast(4, got.state, got.structure)
    assert b2.metrics["alds_params_kept"] == pytest.approx(0.5, abs=0.005)
    again = RESNET.build(b2.structure)
    again.load_state_dict(client.decode(b2.payload).state)
    assert again(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("plus", [False, True], ids=["alds", "alds+"])
def test_alds_factorized_model_computes_its_dense_operators(plus):
    params = ALDSParams(target=0.3, compress_at=[1], seeds=4, plus=plus, error=FAST)
    server = ALDSCompressor(params, LENET)
    w = lenet_state()
    b = server.broadcast(1, w, ())
    assert b.structure
    recomposed = OrderedDict(w)
    for edit in b.structure:
        k, j, scheme = edit.args
        enc = b.start[f"{edit.layer}.encoder.weight"].double().numpy()
        dec = b.start[f"{edit.layer}.decoder.weight"].double().numpy()
        dense = recompose(enc, dec, k, scheme)
        original = w[f"{edit.layer}.weight"].double().numpy()
        recomposed[f"{edit.layer}.weight"] = torch.from_numpy(dense).float()
        # Its real error (in its folding) is the sliced SVD's, bounded by √k × the tabulated maximum.
        err = np.linalg.norm(fold(original - dense, scheme), 2) / np.linalg.norm(fold(original, scheme), 2)
        assert err == pytest.approx(true_error(original, k, j, scheme), rel=1e-4)
        assert err <= math.sqrt(k) * b.metrics["alds_max_error"] + 1e-6
    factorized = LENET.build(b.structure)
    factorized.load_state_dict(b.start)
    dense_model = LENET.build()
    dense_model.load_state_dict(recomposed)
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(factorized(x), dense_model(x), atol=1e-4)


def test_alds_broadcasts_with_bad_structures_are_decode_errors():
    client = ALDSCompressor(ALDSParams(seeds=1, error=FAST), LENET)
    w = lenet_state()
    bad = [
        [["alds", "features.9", [1, 2, 0]]],  # no such layer
        [["alds", "features.2", [7, 2, 0]]],  # k does not divide 20 input channels
        [["alds", "features.2", [1, 10_000, 0]]],  # rank above the layer's
        [["alds", "features.2", [1, 2, 4]]],  # no folding scheme 4
        [["alds", "classifier.1", [1, 2, 1]]],  # a linear layer has scheme 0 only
        [["alds", "features.2", [1, 2]]],  # scheme missing
        [["shrink", "features.2", [1]]],  # unknown op
        [["alds", "features.1", [1, 1, 0]]],  # a ReLU, not a layer ALDS can factorize
        "features.2",
        [["alds", "features.2", [1.5, 2, 0]]],
    ]
    for structure in bad:
        payload = pack("alds", {"structure": structure}, specs_of(w), dense_bytes(w.values()), by_digest=True)
        with pytest.raises(DecodeError):
            client.decode(payload)
    # The right structure with the wrong tensors: the digest does not match.
    good = ALDSCompressor(ALDSParams(seeds=1, error=FAST), LENET).broadcast(1, w, ())
    params = {"structure": [[e.op, e.layer, list(e.args)] for e in good.structure]}
    with pytest.raises(DecodeError, match="tensor list"):
        client.decode(pack("alds", params, specs_of(w), dense_bytes(w.values()), by_digest=True))
    assert structure_from_json(json.loads(json.dumps(params))["structure"]) == good.structure  # plain JSON, exact


def test_client_state_of_vanished_tensors_is_dropped():
    update = {"a.weight": torch.zeros(3, 4), "b.encoder.weight": torch.zeros(2, 2)}
    state = {
        "ef/a.weight": torch.ones(3, 4),
        "ef/b.weight": torch.ones(5, 5),  # the layer was factorized
        "u/a.weight": torch.ones(2, 2),  # same name, other shape
        "v/b.encoder.weight": torch.ones(2, 2),
    }
    assert sorted(fit_state(state, update)) == ["ef/a.weight", "v/b.encoder.weight"]


def test_structure_edits_rebuild_the_same_specs_on_both_sides():
    structure = (Edit("alds", "features.2", (2, 5, 3)), Edit("alds", "classifier.1", (4, 20, 0)))
    specs = LENET.specs(structure)
    names = [s.name for s in specs]
    assert "features.2.encoder.weight" in names and "classifier.1.encoder.weight" in names
    assert "features.2.weight" not in names
    assert tuple(specs_of(LENET.build(structure).state_dict())) == specs


def test_alds_final_only_compresses_the_last_model_and_nothing_before():
    params = ALDSParams(target=0.5, compress_at=[], final=True, seeds=2, error=FAST)
    server, client = ALDSCompressor(params, LENET), ALDSCompressor(params, LENET)
    w = lenet_state()
    assert server.broadcast(1, w, ()).structure == ()
    assert server.end_of_round(1, w, (), last=False).is_global
    snap = server.end_of_round(2, w, (), last=True)
    assert not snap.is_global and snap.structure and snap.metrics["alds_params_kept"] == pytest.approx(0.5, abs=0.01)
    got = client.decode(snap.payload)
    assert got.structure == snap.structure
    assert all(torch.equal(got.state[k], snap.state[k]) for k in snap.state)


def test_strategy_checkpoint_restores_structure_and_compressor_state(tmp_path):
    """What a resumed run reads back: the architecture edits, the update limits that follow, LC's Θ and λ."""
    from flwr.serverapp.strategy import FedAvg

    from fedcomp.flower.strategy import CompressedStrategy

    def strategy(server_compression):
        s = CompressedStrategy(FedAvg(), arch=LENET, num_partitions=2)
        s.server_compression = server_compression
        return s

    w = lenet_state()
    lc_server = strategy(lc("augmented_lagrangian"))
    lc_server.server_compression.broadcast(1, w, ())
    lc_server.server_compression.end_of_round(1, w, (), last=False)
    alds_server = strategy(ALDSCompressor(ALDSParams(seeds=1, error=FAST), LENET))
    alds_server.structure = alds_server.server_compression.broadcast(1, w, ()).structure
    for server, fresh in ((lc_server, strategy(lc("augmented_lagrangian"))), (alds_server, strategy(ALDSCompressor(ALDSParams(seeds=1, error=FAST), LENET)))):  # fmt: skip
        torch.save({"server": server.state_dict()}, tmp_path / "ckpt.pt")
        fresh.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["server"])
        assert fresh.structure == server.structure
        # Updates are now expected in the restored architecture's shapes.
        assert fresh.update_limits.expected == tuple(
            s for s in LENET.specs(server.structure) if s.dtype.is_floating_point
        )
    assert alds_server.structure  # the ALDS case really had a changed architecture
    restored = strategy(lc("augmented_lagrangian"))
    restored.load_state_dict(lc_server.state_dict())
    assert (
        restored.server_compression.broadcast(2, w, ()).payload
        == lc_server.server_compression.broadcast(2, w, ()).payload
    )


def test_a_checkpoint_from_before_the_rename_restores_the_model_compressors_state():
    """Checkpoints written while the model compressor was called ``downlink`` keep its state under that key."""
    from flwr.serverapp.strategy import FedAvg

    from fedcomp.flower.strategy import CompressedStrategy

    w = lenet_state()
    saved, restored = (CompressedStrategy(FedAvg(), arch=LENET, server_compression="lc") for _ in range(2))
    saved.server_compression.broadcast(1, w, ())
    saved.server_compression.end_of_round(1, w, (), last=False)
    state = saved.state_dict()
    old = {("downlink" if k == "server_compression" else k): v for k, v in state.items()}
    restored.load_state_dict(old)
    assert (
        restored.server_compression.broadcast(2, w, ()).payload == saved.server_compression.broadcast(2, w, ()).payload
    )


def test_the_final_payload_is_the_final_model_even_when_the_last_round_compresses():
    """ALDS acting in the last round: final_model.bin must decode to the model evaluated and saved, not a re-compression."""
    server = ALDSCompressor(ALDSParams(compress_at=[2], seeds=2, error=FAST), LENET)
    b = server.broadcast(2, lenet_state(), ())
    snap = server.end_of_round(2, b.start, b.structure, last=True)
    got = ALDSCompressor(ALDSParams(compress_at=[2], seeds=2, error=FAST), LENET).decode(snap.payload)
    assert got.structure == snap.structure == b.structure
    assert all(torch.equal(got.state[k], snap.state[k]) for k in snap.state)
    # The identity compressor's final payload is still the identity codec's bytes.
    w = lenet_state()
    assert IdentityModelCompressor(None, LENET).end_of_round(1, w, (), last=True).payload == (
        IdentityCompressor().encode(w).payload
    )


def test_alds_counts_its_target_over_the_whole_model_and_searches_every_divisor_when_asked():
    from fedcomp.compressors.model.alds import tabulate

    arch = Architecture("resnet20", (3, 32, 32), 10)
    torch.manual_seed(0)
    state = arch.build().state_dict()
    total = sum(p.numel() for p in arch.build().parameters())
    server = ALDSCompressor(ALDSParams(target=0.5, target_of="model", seeds=2), arch)
    new_state, structure, metrics = server.compress(state, (), 0.5)
    kept = sum(p.numel() for p in arch.build(structure).parameters())
    assert kept <= 0.5 * total and metrics["alds_model_params_kept"] == pytest.approx(kept / total)
    layers_only = ALDSCompressor(ALDSParams(target=0.5, seeds=2), arch).compress(state, (), 0.5)[1]
    assert sum(p.numel() for p in arch.build(layers_only).parameters()) > 0.5 * total  # BN, fc bias, stem stay on top
    assert tabulate("w", np.zeros((4, 12, 3, 3)), max_k=0).ks == [1, 2, 3, 4, 6, 12]  # every divisor of 12
    assert tabulate("w", np.zeros((4, 12, 3, 3))).ks == [1, 2, 3, 4, 6]  # the default stops at 8
    with pytest.raises(ConfigError, match="removes more than its decomposable weights hold"):
        ALDSCompressor(ALDSParams(target=0.9999, target_of="model"), arch)


def test_lc_net_wide_corrections_and_normalized_alpha_travel_in_the_broadcast():
    """Q(2) + P(net-wide 1%) on LeNet-5: κ is counted over all its weights together, the broadcast's Θ
    decodes to the server's Δ(Θ); a net-wide scope on another form and normalize on another form are refused."""
    from collections import OrderedDict

    import torch

    from fedcomp.compressors.model.lc import FormParams, GroupParams, LCCompressor, LCParams
    from fedcomp.compressors.model.lc_forms import RankSelection
    from fedcomp.compressors.model.structure import Architecture
    from fedcomp.config import ConfigError

    arch = Architecture("lenet5_caffe", (1, 28, 28), 10)
    forms = [FormParams(form="quantize", k=2), FormParams(form="prune", keep=0.01, scope="net")]
    params = LCParams(variant="quadratic_penalty", groups=[GroupParams(forms=forms)])
    server, client = LCCompressor(params, arch), LCCompressor(params, arch)
    torch.manual_seed(0)
    state = OrderedDict(arch.build().state_dict())
    weights = [n for n in server.forms]
    total = sum(state[n].numel() for n in weights)
    b = server.broadcast(1, state, ())
    corrections = {n: server.thetas[n][1][0].size for n in weights}
    assert sum(corrections.values()) == -(-total // 100)  # ⌈1% of all the weights⌉, shared unevenly
    assert len(set(corrections.values())) > 1
    got = client.decode(b.payload)
    for n in weights:
        assert torch.equal(got.loss_term.centre[n], server.delta[n])
    with pytest.raises(ConfigError, match="scope"):
        LCParams(groups=[GroupParams(forms=[FormParams(form="quantize", scope="net")])]).validate("server_compression")
    with pytest.raises(ConfigError, match="normalize"):
        LCParams(groups=[GroupParams(forms=[FormParams(form="prune", keep=0.1, normalize=True)])]).validate("s")
    normalized = GroupParams(forms=[FormParams(form="rank_selection", alpha=0.05, normalize=True)])
    lc = LCCompressor(LCParams(groups=[normalized]), arch)
    assert all(isinstance(f[0], RankSelection) and f[0].alpha == pytest.approx(0.05 / total) for f in lc.forms.values())
