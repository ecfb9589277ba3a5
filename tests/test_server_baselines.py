"""Each model compressor's baseline option is the operation its name says (issue 39).

LC's direct compression is one C step on the given weights; ALDS's ``k1`` is plain per-layer SVD at the
ranks Algorithm 1's OptimalRanks allocates, ``fixed_k`` one k everywhere; UDFC's recalibration is the same
step whatever the compensation; network slimming removes the smallest |γ| at the FLOPs asked for. Tiny
models, real torch.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from fedcomp.compressors.model.alds import ALDSCompressor, ALDSParams
from fedcomp.compressors.model.bwcp import BWCPCompressor, BWCPParams, SlimmingRegularizer
from fedcomp.compressors.model.lc import LCCompressor, LCParams
from fedcomp.compressors.model.structure import Architecture
from fedcomp.compressors.model.udfc import (
    UDFCCompressor,
    UDFCParams,
    distill_inputs,
    merge_scales,
    recalibrate_bn,
)
from fedcomp.params import ConfigError, params_from_dict


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 8))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    )  # fmt: skip


MLP = Architecture.of(_mlp)
CNN = Architecture.of(_cnn, (1, 6, 6))


def _state(arch: Architecture, seed: int) -> OrderedDict:
    """Random weights and BatchNorm parameters and statistics (a "trained" model's kind of values)."""
    torch.manual_seed(seed)
    state = OrderedDict((k, v.detach().clone()) for k, v in arch.build().state_dict().items())
    for k, v in state.items():
        if k.endswith("running_var") or (k.endswith("weight") and v.ndim == 1):
            state[k] = torch.rand_like(v) + 0.2
        elif k.endswith("running_mean") or (k.endswith("bias") and v.ndim == 1):
            state[k] = 0.3 * torch.randn_like(v) + 0.1
    return state


# ----------------------------------------------------------------------------- LC: direct compression


QP = {"layers": ["*"], "forms": [{"form": "quantize", "k": 4}, {"form": "prune", "keep": 0.05}]}


def _lc(**kw) -> LCCompressor:
    return LCCompressor(params_from_dict(LCParams, {"groups": [QP], **kw}, "server_compression"), MLP)


def test_direct_compression_is_one_c_step_on_the_given_weights_and_trains_dense():
    dc = _lc(direct_compression=True, start_round=2)
    assert LCCompressor.broadcasts_dense_model(dc.params)
    w1, w2, w3 = (_state(MLP, s) for s in (1, 2, 3))
    # Before start_round: the aggregated model itself.
    before = dc.end_of_round(1, w1, (), last=False)
    assert before.is_global and all(torch.equal(before.state[k], w1[k]) for k in w1)
    for server_round, w, last in ((2, w2, False), (3, w3, True)):
        # Every broadcast is the dense model, without a penalty: clients train the reference as it is.
        received = dc.decode(dc.broadcast(server_round, w, ()).payload)
        assert received.loss_term is None
        assert all(torch.equal(received.state[k], w[k]) for k in w)
        got = dc.end_of_round(server_round, w, (), last=last)
        fresh = _lc()  # a compressor that has never seen a model: its first C step, Θ = Π(w), λ = 0
        fresh.c_step(w)
        assert not got.is_global
        for k in w:
            expected = fresh.delta[k] if k in fresh.forms else w[k]
            assert torch.equal(got.state[k], expected), k
        assert dc.lam == {} and dc.step == 0
    # The final payload decodes to that model.
    shipped = dc.decode(got.payload)
    assert all(torch.equal(shipped.state[k], got.state[k]) for k in w3)


def test_direct_compression_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"server_compression\.direct_compression"):
        _lc(direct_compression=True, variant="compressed_start")
    with pytest.raises(ConfigError, match=r"server_compression\.direct_compression"):
        _lc(direct_compression="yes")


# ----------------------------------------------------------------------------- ALDS: k1, fixed_k, uniform_svd


def _wide() -> nn.Module:
    return nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 20))


WIDE = Architecture.of(_wide)


def _spectra() -> OrderedDict:
    """Layer 0 with a fast-decaying spectrum, layer 2 with a slow one: the budget should not be split evenly."""
    gen = np.random.default_rng(0)
    state = OrderedDict((k, v.detach().clone()) for k, v in WIDE.build().state_dict().items())
    for name, decay in (("0", 0.6), ("2", 0.97)):
        f, c = state[f"{name}.weight"].shape
        u, _ = np.linalg.qr(gen.normal(size=(f, f)))
        v, _ = np.linalg.qr(gen.normal(size=(c, c)))
        r = min(f, c)
        state[f"{name}.weight"] = torch.from_numpy((u[:, :r] * decay ** np.arange(r)) @ v[:, :r].T).float()
    return state


def _alds(state: OrderedDict, arch: Architecture = WIDE, keep: float = 0.5, **kw):  # noqa: ANN202
    comp = ALDSCompressor(params_from_dict(ALDSParams, {"target": 1 - keep, **kw}, "server_compression"), arch)
    return comp, comp.compress(state, (), keep)


def _sv_errors(w: np.ndarray) -> np.ndarray:
    """σ_{j+1}/σ_1 for j = 0 … r (0 at full rank): the relative error of plain rank-j SVD."""
    s = np.linalg.svd(w, compute_uv=False)
    return np.append(s / s[0], 0.0)


def test_k1_is_per_layer_svd_at_the_optimal_ranks():
    state = _spectra()
    comp, (got, structure, _) = _alds(state, keep=0.25, allocation="k1")
    weights = {n: state[f"{n}.weight"].double().numpy() for n, _ in comp.layers}
    budget = comp.budget(0.25)
    edits = {e.layer: e.args for e in structure}
    assert edits and all(k == 1 and scheme == 0 for k, _, scheme in edits.values())
    # Each factorized layer computes the truncated SVD of its weight at its rank (Eckart–Young).
    for name, (_, j, _) in edits.items():
        w = weights[name]
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        enc = got[f"{name}.encoder.weight"].double().numpy()
        dec = got[f"{name}.decoder.weight"].double().numpy()
        np.testing.assert_allclose(dec @ enc, (u[:, :j] * s[:j]) @ vt[:j], atol=1e-5)
    # The ranks: no choice of ranks (or dense layers) within the budget has a lower worst error.
    options = []
    for w in weights.values():
        f, c = w.shape
        errs = _sv_errors(w)
        options.append(
            [(f * c, 0.0)] + [(j * (f + c), errs[j]) for j in range(1, min(f, c) + 1) if j * (f + c) < f * c]
        )
    best = min(max(e for _, e in combo) for combo in itertools.product(*options) if sum(p for p, _ in combo) <= budget)
    achieved = max((_sv_errors(weights[n])[j] for n, (_, j, _) in edits.items()), default=0.0)
    used = sum(j * sum(weights[n].shape) for n, (_, j, _) in edits.items())
    used += sum(w.size for n, w in weights.items() if n not in edits)
    assert used <= budget
    assert achieved == pytest.approx(best, abs=1e-12)
    assert len(edits) == 2 and len({j for _, j, _ in edits.values()}) == 2  # not one rank for both


def test_fixed_k_uses_each_layers_nearest_divisor_and_uniform_svd_one_rank_fraction():
    state = _state(MLP, 1)
    comp, (_, structure, _) = _alds(state, MLP, 0.7, allocation="fixed_k", k=3)
    # 12 inputs: 3 divides them; 10 inputs: the divisors are 1, 2, 5, 10, the nearest to 3 is 2.
    assert {e.layer: e.args[0] for e in structure} == {"0": 3, "2": 2}
    comp, (_, structure, _) = _alds(state, MLP, 0.7, allocation="uniform_svd")
    ranks = {e.layer: e.args for e in structure}
    assert all(k == 1 for k, _, _ in ranks.values())
    full = {"0": 10, "2": 8}
    fractions = {n: j / full[n] for n, (_, j, _) in ranks.items()}
    assert len(ranks) == 2 and max(fractions.values()) - min(fractions.values()) <= 1 / 8 + 1e-9


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"allocation": "k2"}, "allocation"),
        ({"allocation": "fixed_k", "k": 0}, "k"),
        ({"k": 5}, "k"),
        ({"allocation": "k1", "plus": True}, "plus"),
    ],
)
def test_alds_baseline_config_errors_name_the_key(section, key):
    with pytest.raises(ConfigError, match=rf"server_compression\.{key}\b"):
        params_from_dict(ALDSParams, section, "server_compression")


# ----------------------------------------------------------------------------- UDFC: the same recalibration for all


UDFC_VARIANTS = {"plain": {"compensation": "none"}, "merging": {"compensation": "merging"}, "udfc": {}}
DISTILL = {"distill_samples": 8, "distill_steps": 3, "prune": 0.4, "bits": 8}


def _udfc(state: OrderedDict, **kw):  # noqa: ANN202
    comp = UDFCCompressor(UDFCParams(**DISTILL, **kw), CNN, seed=7)
    return comp.compress(state, ())[1:3]


def test_recalibration_is_the_same_step_for_plain_merging_and_udfc():
    state = _state(CNN, 0)
    teacher = CNN.build()
    teacher.load_state_dict(state)
    inputs = distill_inputs(teacher, CNN.input_shape, DISTILL["distill_samples"], DISTILL["distill_steps"], 7)
    stats = ("running_mean", "running_var")
    results = {}
    for name, kw in UDFC_VARIANTS.items():
        recal, structure = _udfc(state, **kw)
        bare, bare_structure = _udfc(state, recalibrate=False, **kw)  # "paper" for udfc
        assert structure == bare_structure and structure
        student = CNN.build(bare_structure)
        student.load_state_dict(bare)
        recalibrate_bn(student, inputs)  # the recalibration, by hand, on the un-recalibrated model
        by_hand = student.state_dict()
        changed = False
        for k, v in recal.items():
            if k.endswith(stats):
                torch.testing.assert_close(v, by_hand[k], rtol=1e-5, atol=1e-6)
                changed |= not torch.allclose(v, bare[k])
            else:
                assert torch.equal(v, bare[k]), (name, k)  # nothing but the statistics differs
        assert changed, name
        results[name] = recal
    # The three compensations differ (the comparison is between different models).
    assert not torch.equal(results["plain"]["3.weight"], results["merging"]["3.weight"])
    assert not torch.equal(results["merging"]["3.weight"], results["udfc"]["3.weight"])


def test_merging_folds_a_positive_multiple_into_its_twin_exactly():
    w_hat = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [3.0, 0.0, 6.0], [1.0, 1.0, 1.0]])
    scales = merge_scales(w_hat, np.array([2]), np.array([0, 1, 3]))
    np.testing.assert_allclose(scales, [[3.0, 0.0, 0.0]])  # channel 2 = 3 × channel 0


def test_udfc_baseline_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"server_compression\.compensation\b"):
        params_from_dict(UDFCParams, {"compensation": "merge"}, "server_compression")
    with pytest.raises(ConfigError, match=r"server_compression\.compensate\b"):
        params_from_dict(UDFCParams, {"compensate": False, "compensation": "merging"}, "server_compression")
    with pytest.raises(ConfigError, match=r"server_compression\.nonnegative\b"):
        params_from_dict(UDFCParams, {"compensation": "none", "nonnegative": True}, "server_compression")


# ----------------------------------------------------------------------------- BWCP: network slimming


def _slimming(**kw) -> BWCPCompressor:
    params = params_from_dict(BWCPParams, {"variant": "network_slimming", **kw}, "server_compression")
    return BWCPCompressor(params, CNN)


def test_network_slimming_removes_the_smallest_gammas_until_the_flops_target():
    comp = _slimming(flops_removed=0.3)
    state = _state(CNN, 2)
    bns = [t.bn for t in comp.triples]
    assert bns == ["1", "4"]  # the untied conv–BN–ReLU layers
    gen = torch.Generator().manual_seed(0)
    for bn, scale in zip(bns, (1.0, 3.0), strict=True):  # distinct |γ|, signs mixed, layers on different scales
        n = state[f"{bn}.weight"].numel()
        sign = torch.tensor([1.0, -1.0]).repeat(n)[:n]
        state[f"{bn}.weight"] = scale * (torch.rand(n, generator=gen) + 0.05) * sign
    pruned, structure, metrics = comp.prune(state, ())
    kept = {bn: [c for c, g in enumerate(state[f"{bn}.weight"]) if g in pruned[f"{bn}.weight"]] for bn in bns}
    gone = [abs(float(g)) for bn in bns for c, g in enumerate(state[f"{bn}.weight"]) if c not in kept[bn]]
    stay = [abs(float(g)) for bn in bns for c in kept[bn] for g in [state[f"{bn}.weight"][c]]]
    assert gone and max(gone) < min(stay)  # one threshold over both layers
    # Plain pruning: the kept rows and the next layers' kept inputs, unchanged.
    torch.testing.assert_close(pruned["0.weight"], state["0.weight"][kept["1"]])
    torch.testing.assert_close(pruned["3.weight"], state["3.weight"][:, kept["1"]][kept["4"]])
    torch.testing.assert_close(pruned["6.weight"], state["6.weight"][:, kept["4"]])
    # The fewest channels that remove the FLOPs asked for (6×6 outputs everywhere: 36 positions per conv).

    def macs(w1: int, w4: int) -> int:
        return w1 * 9 * 36 + w4 * w1 * 9 * 36 + 5 * w4 * 9 * 36 + 5 * 3

    base = macs(8, 6)
    assert comp.macs(()) == base
    widths = {bn: len(kept[bn]) for bn in bns}
    assert comp.macs(structure) == macs(widths["1"], widths["4"])
    assert metrics["bwcp_flops_removed"] == pytest.approx(1 - macs(widths["1"], widths["4"]) / base)
    assert metrics["bwcp_flops_removed"] >= 0.3
    _, last_bn, _ = max((abs(float(state[f"{bn}.weight"][c])), bn, c) for bn in bns for c in range(8 if bn == "1" else 6)
                        if c not in kept[bn])  # fmt: skip
    widths[last_bn] += 1  # the last channel taken back: short of the target
    assert 1 - macs(widths["1"], widths["4"]) / base < 0.3


def test_network_slimming_trains_plain_batchnorm_with_the_l1_term():
    comp = _slimming(lambda1=0.5)
    state = _state(CNN, 3)
    broadcast = comp.broadcast(1, state, ())
    assert broadcast.structure == ()  # no BWCP modules: plain BatchNorm
    received = comp.decode(broadcast.payload)
    assert isinstance(received.loss_term, SlimmingRegularizer)
    model = CNN.build()
    model.load_state_dict(received.state)
    expected = 0.5 * (state["1.weight"].abs().sum() + state["4.weight"].abs().sum())
    torch.testing.assert_close(received.loss_term(model), expected)
    assert comp.statistics_wanted(1, (), last=True) == comp.params.recalibrate_samples  # before its pruning


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"variant": "slimming"}, "variant"),
        ({"variant": "network_slimming", "flops_removed": 1.0}, "flops_removed"),
        ({"flops_removed": 0.6}, "flops_removed"),
        ({"variant": "network_slimming", "prune_at": [2, 4]}, "prune_at"),
    ],
)
def test_slimming_config_errors_name_the_key(section, key):
    with pytest.raises(ConfigError, match=rf"server_compression\.{key}\b"):
        params_from_dict(BWCPParams, section, "server_compression")


# ----------------------------------------------------------------------------- the small dense model


def _lenet_params(width: float) -> int:
    from fedcomp.models import build_model

    return sum(p.numel() for p in build_model("lenet5_caffe", (1, 28, 28), 10, {"width": width}).parameters())


def test_lenet_width_scales_channels_and_hidden_units_and_width_1_is_the_paper_model():
    # The module docstring's count, by hand: 520 + 25,050 + 400,500 + 5,010.
    assert _lenet_params(1.0) == 431_080
    # width 0.5: 10 and 25 channels, 250 hidden units: (25 + 1)·10 + (250 + 1)·25 + (400 + 1)·250 + (250 + 1)·10.
    assert _lenet_params(0.5) == 260 + 6_275 + 100_250 + 2_510
    from fedcomp.models import build_model

    for bad in (0, -1, 5, True, "0.5"):
        with pytest.raises(ValueError, match="model.params.width"):
            build_model("lenet5_caffe", (1, 28, 28), 10, {"width": bad})


def test_matching_width_is_the_width_whose_parameter_count_is_nearest():
    from fedcomp.models import matching_width

    for target in (172_780, 100_000, 300_000):
        width = matching_width("lenet5_caffe", target, (1, 28, 28), 10)
        # Independently: every width on a fine grid; none comes nearer the target than the one chosen.
        nearest = min(abs(_lenet_params(w / 1000) - target) for w in range(300, 1001, 5))
        assert abs(_lenet_params(width) - target) <= nearest, (target, width)
    with pytest.raises(ValueError, match="takes no width"):
        matching_width("vgg16_bn", 100_000, (1, 28, 28), 10)
    with pytest.raises(ValueError, match="outside what"):
        matching_width("lenet5_caffe", 10_000_000, (1, 28, 28), 10)


def test_resnet20_width_scales_every_stage_and_its_padded_shortcuts_follow():
    from fedcomp.models import build_model, matching_width

    def count(width: float) -> int:
        return sum(p.numel() for p in build_model("resnet20", (1, 28, 28), 10, {"width": width}).parameters())

    # width 0.5 on one input channel, by hand: stages of 8, 16 and 32 channels. Stem 3·3·1·8 + BN 16; stage 1,
    # 3 blocks of two 8→8 convs and two BNs; stage 2, 8→16 then five 16→16 convs; stage 3 likewise 16→32;
    # fc 32·10 + 10.
    stage1 = 3 * (2 * 9 * 8 * 8 + 2 * 16)
    stage2 = 9 * 8 * 16 + 5 * 9 * 16 * 16 + 6 * 32
    stage3 = 9 * 16 * 32 + 5 * 9 * 32 * 32 + 6 * 64
    assert count(0.5) == 72 + 16 + stage1 + stage2 + stage3 + 330
    model = build_model("resnet20", (1, 28, 28), 10, {"width": 0.3})  # 5, 10, 19 channels: odd pads
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    out.sum().backward()
    for bad in (0, 5, True):
        with pytest.raises(ValueError, match="model.params.width"):
            build_model("resnet20", (1, 28, 28), 10, {"width": bad})
    width = matching_width("resnet20", 135_000, (1, 28, 28), 10)
    nearest = min(abs(count(w / 200) - 135_000) for w in range(100, 201))
    assert abs(count(width) - 135_000) <= nearest
