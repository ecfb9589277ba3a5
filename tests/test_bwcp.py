"""BWCP on real tensors: Newton iterations, activation probabilities, the pruned model equals the masked one."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from fedcomp.coding import DecodeError
from fedcomp.compressors.model.bwcp import (
    BWCP,
    BWCPCompressor,
    BWCPParams,
    SparseRegularizer,
    activation_probability,
    gumbel_mask,
    newton_inverse_sqrt,
    sharpen,
)
from fedcomp.compressors.model.channels import ChannelMap, channel_graph
from fedcomp.compressors.model.structure import Architecture, Edit, structure_from_json
from fedcomp.config import ConfigError

RESNET = Architecture("resnet20", (1, 28, 28), 10)


def test_newton_iterations_converge_to_the_inverse_square_root():
    rng = np.random.default_rng(0)
    for _ in range(5):
        gamma = torch.from_numpy(rng.uniform(0.3, 1.5, size=16))
        x = torch.from_numpy(rng.normal(size=(16, 400)))
        x = x + 0.5 * x[:1]  # correlated channels
        x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True, unbiased=False)
        rho = x @ x.T / x.shape[1]
        sigma_n = torch.outer(gamma, gamma) * rho / gamma.pow(2).sum()
        assert float(torch.trace(sigma_n)) == pytest.approx(1.0)
        evals, evecs = torch.linalg.eigh(sigma_n)
        exact = evecs @ torch.diag(evals.rsqrt()) @ evecs.T
        errors = [float((newton_inverse_sqrt(sigma_n, t) - exact).norm() / exact.norm()) for t in range(1, 11)]
        assert errors == sorted(errors, reverse=True)  # every iteration gets closer ...
        assert min(errors) < 1e-4  # ... to Σ_N^{-1/2} (eigenvalues down to ~4e-3 here: condition number ~80)
        assert errors[4] < 0.5  # T = 5, the default: most of the way (IterNorm's partial whitening)
        # Run far past convergence, eq. 5's uncoupled form amplifies rounding (a known property of it): T is capped.
        far = float((newton_inverse_sqrt(sigma_n, 25) - exact).norm() / exact.norm())
        assert not far <= errors[-1]  # larger, or overflowed to nan


def test_activation_probability_matches_monte_carlo():
    """Proposition 1 (and Proposition 2 when the channels are uncorrelated): P(γX̄ + β > δ)."""
    gen = torch.Generator().manual_seed(0)
    for gamma, beta in [(1.0, 0.0), (0.5, -0.3), (2.0, 0.7), (0.05, -0.2), (0.3, 0.01)]:
        samples = gamma * torch.randn(400_000, generator=gen, dtype=torch.float64) + beta
        mc = float((samples > 0.05).double().mean())
        closed = float(activation_probability(torch.tensor(gamma), torch.tensor(beta)))
        assert closed == pytest.approx(mc, abs=3e-3)
    # Whitened, independent channels: X̂_c = w_cc(γ_c X̄_c + β_c) with γ̂ = Wγ, β̂ = Wβ as Proposition 2 says.
    layer = BWCP(4, group_size=4)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 1.0, 2.0, 0.1]))
        layer.bias.copy_(torch.tensor([0.2, -0.5, 0.1, -0.05]))
    w = torch.diag(torch.tensor([1.3, 0.8, 0.4, 2.0]))[None]
    x_bar = torch.randn(200_000, 4, generator=gen)
    x_hat = (x_bar * layer.weight.detach() + layer.bias.detach()) @ w[0].T
    mc = (x_hat > 0.05).float().mean(0)
    assert torch.allclose(layer.probability(w).detach(), mc, atol=4e-3)


def _bwcp_resnet(seed: int = 0) -> tuple[BWCPCompressor, OrderedDict, tuple]:
    torch.manual_seed(seed)
    comp = BWCPCompressor(BWCPParams(), RESNET)
    state = comp.to_bwcp(OrderedDict(RESNET.build().state_dict()))
    model = RESNET.build(comp.bwcp_edits)
    model.load_state_dict(state)
    with torch.no_grad():  # channels of every kind: kept, near-dead, dead
        for m in model.modules():
            if isinstance(m, BWCP):
                m.weight.copy_(torch.rand(m.num_features) * 1.5)
                m.weight[::3] = 0.01
                m.bias.copy_(torch.randn(m.num_features) * 0.5)
                m.bias[::3] = -0.5
    model.train()
    for _ in range(3):  # batch statistics and running whitening from real forward passes
        model(torch.randn(16, 1, 28, 28))
    return comp, OrderedDict(model.state_dict()), comp.bwcp_edits


def test_bwcp_layer_is_batchnorm_at_identity_whitening_and_full_mask():
    bn = torch.nn.BatchNorm2d(8).eval()
    layer = BWCP(8, group_size=4).eval()
    with torch.no_grad():
        for m in (bn, layer):
            m.running_mean.copy_(torch.linspace(-1, 1, 8))
            m.running_var.copy_(torch.linspace(0.5, 2, 8))
            m.weight.copy_(torch.linspace(0.5, 1.5, 8))
            m.bias.copy_(torch.linspace(0.1, 0.9, 8))  # every channel active: mask 1
    x = torch.randn(2, 8, 5, 5)
    assert torch.allclose(layer(x), bn(x), atol=1e-6)


def test_pruned_model_computes_the_masked_model_in_eval_mode():
    comp, state, structure = _bwcp_resnet()
    masked = RESNET.build(structure)
    masked.load_state_dict(state)
    masked.eval()
    pruned_state, pruned_structure, metrics = comp.prune(state, structure)
    assert metrics["bwcp_channels_removed"] > 0
    pruned = RESNET.build(pruned_structure)
    pruned.load_state_dict(pruned_state)
    pruned.eval()
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(pruned(x), masked(x), atol=1e-4, rtol=1e-4)
    kept = sum(p.numel() for p in pruned.parameters())
    assert kept < sum(p.numel() for p in masked.parameters())
    # The broadcast of the pruned model decodes to the same thing on a client.
    client = BWCPCompressor(BWCPParams(), RESNET)
    from fedcomp.compressors.model.base import dense_payload

    got = client.decode(dense_payload("bwcp", pruned_state, pruned_structure))
    assert got.structure == pruned_structure and all(torch.equal(got.state[k], pruned_state[k]) for k in pruned_state)


def _close_more_channels(model: torch.nn.Module, seed: int) -> None:
    """Training between two prunings: some β fall, the statistics and whitening move."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BWCP):
                m.weight.mul_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.sub_(torch.rand(m.num_features, generator=gen) * 0.6)
    model.train()
    for _ in range(3):
        model(torch.randn(16, 1, 28, 28, generator=gen))
    model.eval()


def test_progressive_pruning_keeps_bwcp_modules_and_each_pruning_is_exact():
    comp, state, structure = _bwcp_resnet()
    x = torch.randn(8, 1, 28, 28)
    widths = []
    for step, more in enumerate((True, True, False)):
        masked = RESNET.build(structure)
        masked.load_state_dict(state)
        masked.eval()
        state, structure, metrics = comp.prune(state, structure, keep_bwcp=more)
        pruned = RESNET.build(structure)
        pruned.load_state_dict(state)
        pruned.eval()
        with torch.no_grad():
            assert torch.allclose(pruned(x), masked(x), atol=1e-4, rtol=1e-4), step
        widths.append(sum(m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)))
        bwcp_layers = [m for m in pruned.modules() if isinstance(m, BWCP)]
        assert bool(bwcp_layers) == more  # re-inserted for the next pruning, plain BatchNorm after the last
        if more:
            assert all(torch.equal(m.running_whitening, torch.eye(m.group).expand_as(m.running_whitening))
                       for m in bwcp_layers)  # fmt: skip
            assert metrics["bwcp_channels_removed"] > 0
            _close_more_channels(pruned, step)
            state = OrderedDict(pruned.state_dict())
    assert widths[0] > widths[1] > widths[2]  # each pruning removed what had closed since


def test_prune_at_several_rounds_prunes_at_each_and_regularizes_until_the_last():
    comp, state, structure = _bwcp_resnet()
    comp = BWCPCompressor(BWCPParams(prune_at=[2, 4]), RESNET)
    first = comp.broadcast(2, state, structure)
    assert comp.prunes_done == 1 and not comp.pruned and first.metrics["bwcp_prunings"] == 1
    assert any(e.op == "bwcp" for e in first.structure)
    assert comp.decode(first.payload).loss_term is not None  # still regularized between prunings
    assert comp.statistics_wanted(3, first.structure, last=False) == 0
    assert comp.statistics_wanted(4, first.structure, last=False) == 512
    second = comp.broadcast(4, first.start, first.structure)
    assert comp.pruned and not any(e.op.startswith("bwcp") for e in second.structure)
    assert comp.decode(second.payload).loss_term is None
    assert comp.statistics_wanted(4, second.structure, last=True) == 0
    restored = BWCPCompressor(BWCPParams(prune_at=[2, 4]), RESNET)
    restored.load_state_dict(comp.state_dict())
    assert restored.prunes_done == 2
    old = BWCPCompressor(BWCPParams(prune_at=[2, 4]), RESNET)
    old.load_state_dict({"pruned": True})  # a checkpoint written before progressive pruning
    assert old.pruned
    # A layer may be edited twice only as pruning + re-inserted BWCP module; anything else is refused.
    bn = next(e for e in first.structure if e.op == "bwcp")
    assert sum(e.layer == bn.layer for e in first.structure) == 2
    for twice in (
        [["resize", bn.layer, [3]], ["resize", bn.layer, [2]]],
        [["bwcp", bn.layer, list(bn.args)], ["resize", bn.layer, [3]]],
        [["resize", bn.layer, [3]], ["bwcp", bn.layer, list(bn.args)], ["bwcp", bn.layer, list(bn.args)]],
    ):
        with pytest.raises(DecodeError, match="twice"):
            structure_from_json(twice)


def test_regularizer_is_eq_7_over_the_bwcp_modules():
    _, state, structure = _bwcp_resnet()
    model = RESNET.build(structure)
    model.load_state_dict(state)
    expected = sum(4e-5 * m.weight.abs().sum() + 8e-5 * m.bias.sum() for m in model.modules() if isinstance(m, BWCP))
    assert float(SparseRegularizer(4e-5, 8e-5)(model).detach()) == pytest.approx(float(expected.detach()))
    assert len([m for m in model.modules() if isinstance(m, BWCP)]) == 19  # every BatchNorm: 9 untied, 10 in streams


def test_sigmoid_alike_transformation_sharpens_and_keeps_the_hard_mask():
    p = torch.tensor([0.02, 0.3, 0.49, 0.5, 0.51, 0.7, 0.98])
    assert torch.equal(sharpen(p, 1.0), p)
    sharp = sharpen(p, 10.0)
    assert torch.equal(sharp > 0.5, p > 0.5) and float(sharp[3]) == pytest.approx(0.5)
    assert bool((sharp[p > 0.5] > p[p > 0.5]).all() and (sharp[p < 0.5] < p[p < 0.5]).all())
    assert float(sharp[-2]) > 0.999 and float(sharp[1]) < 1e-3
    # A clearly active channel (p = 0.7) is sampled almost always on once sharpened; without, often half off.
    gen = torch.Generator().manual_seed(0)
    plain = gumbel_mask(torch.full((20_000,), 0.7), 0.5, gen)
    sharpened = gumbel_mask(sharpen(torch.full((20_000,), 0.7), 10.0), 0.5, gen)
    assert float((plain < 0.5).float().mean()) > 0.2
    assert float((sharpened < 0.5).float().mean()) < 0.001


def test_beta_init_shifts_only_the_modules_whose_masks_are_used_and_params_are_checked():
    arch_state = OrderedDict(RESNET.build().state_dict())
    comp = BWCPCompressor(BWCPParams(beta_init=0.3, sharpness=4.0), RESNET)
    state = comp.to_bwcp(arch_state)
    graph = channel_graph(RESNET)
    # The untied layers and each residual stream's source use their own masks; a follower uses its source's.
    shifted = {f"{t.bn}.bias" for t in graph.triples} | {f"{s.members[0][1]}.bias" for s in graph.streams}
    followers = {f"{bn}.bias" for s in graph.streams for _, bn in s.members[1:]}
    assert followers and not followers & shifted
    for key, value in state.items():
        if key in shifted:
            assert torch.allclose(value, arch_state[key] + 0.3)
        elif key in arch_state:
            assert torch.equal(value, arch_state[key])
    model = RESNET.build(comp.bwcp_edits)
    model.load_state_dict(state)
    assert {m.sharpness for m in model.modules() if isinstance(m, BWCP)} == {4.0}
    for bad in ({"sharpness": 0.5}, {"sharpness": 101}, {"beta_init": -1}, {"momentum": 0.0015}, {"sharpness": 2.25}):
        with pytest.raises(ConfigError, match="sharpness|beta_init|momentum"):
            BWCPParams(**bad).validate("server_compression")
    # A group that does not divide a layer's width is refused, not shrunk (7 ran as 4 on 16 channels).
    with pytest.raises(ConfigError, match=r"group_size = 7 does not divide the 16 channels of .* groups of 4"):
        BWCPCompressor(BWCPParams(group_size=7), RESNET)
    assert BWCPCompressor(BWCPParams(group_size=8), RESNET).triples  # 8 divides 16, 32 and 64
    wide = BWCPCompressor(BWCPParams(group_size=64), RESNET)  # wider than 16 and 32: one group there
    assert {m.group for m in RESNET.build(wide.bwcp_edits).modules() if isinstance(m, BWCP)} == {16, 32, 64}


def test_residual_streams_are_found_between_the_shortcuts():
    streams = channel_graph(RESNET).streams
    assert [s.members[0] for s in streams] == [("conv1", "bn1"), ("layer2.0.conv2", "layer2.0.bn2"),
                                               ("layer3.0.conv2", "layer3.0.bn2")]  # fmt: skip
    assert [len(s.members) for s in streams] == [4, 3, 3]  # the stem and the three block outputs of each stage
    assert streams[0].maps_out == streams[1].maps_in == ("layer2.0.shortcut",)
    assert streams[1].maps_out == streams[2].maps_in == ("layer3.0.shortcut",)
    assert streams[2].consumers[-1] == "fc"
    # Conv–BN shortcuts (torchvision's ResNet-18) are members of the stream they add into.
    resnet18 = channel_graph(Architecture("resnet18", (3, 32, 32), 10)).streams
    assert ("layer2.0.downsample.0", "layer2.0.downsample.1") in resnet18[1].members
    assert len(resnet18) == 4 and resnet18[3].consumers == ("layer4.1.conv1", "fc")


def test_a_stream_shares_its_source_mask_in_training_and_inference():
    comp, state, structure = _bwcp_resnet()
    model = RESNET.build(structure)
    model.load_state_dict(state)
    seen: dict[str, torch.Tensor] = {}
    for name in ("layer1.0.bn2", "layer1.2.bn2", "layer1", "layer2.0.shortcut", "layer2"):
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.detach()))
    x = torch.randn(4, 1, 28, 28)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        with torch.no_grad():
            model(x)
        followers = [m for m in model.modules() if isinstance(m, BWCP) and m.stream == 0 and not m.is_source]
        assert len(followers) == 3 and all(m._source[0] is model.bn1 for m in followers)
        if mode == "eval":
            off = model.bn1.hard_mask() == 0
            assert off.any() and not off.all()
            # Every output of the stage is zero where the stem's mask is: the channels can go.
            assert float(seen["layer1"][:, off].abs().max()) == 0.0
            assert float(seen["layer1.2.bn2"][:, off].abs().max()) == 0.0
            off2 = model.layer2[0].bn2.hard_mask() == 0
            assert float(seen["layer2.0.shortcut"][:, off2].abs().max()) == 0.0  # the shortcut is masked too
            assert float(seen["layer2"][:, off2].abs().max()) == 0.0
    # Pruned: the stage's convs are thinner and the shortcut a channel map.
    pruned_state, pruned_structure, _ = comp.prune(state, structure)
    pruned = RESNET.build(pruned_structure)
    pruned.load_state_dict(pruned_state)
    kept = int(model.bn1.hard_mask().sum())
    assert (
        pruned.conv1.out_channels == pruned.layer1[2].conv2.out_channels == pruned.layer2[0].conv1.in_channels == kept
    )
    assert isinstance(pruned.layer2[0].shortcut, ChannelMap) and pruned.layer2[0].shortcut.in_channels == kept
    assert pruned.fc.in_features == int(model.layer3[0].bn2.hard_mask().sum())


def test_untied_only_when_residual_sharing_is_off_and_hostile_streams_are_rejected():
    comp = BWCPCompressor(BWCPParams(share_residual=False), RESNET)
    assert {e.op for e in comp.bwcp_edits} == {"bwcp"} and len(comp.bwcp_edits) == 9
    shared = BWCPCompressor(BWCPParams(), RESNET).bwcp_edits
    follower_only = tuple(e for e in shared if not (e.op == "bwcp_shared" and e.args[-1] == 1))
    with pytest.raises(DecodeError, match="no source"):
        RESNET.specs(follower_only)
    two_sources = tuple(Edit(e.op, e.layer, (*e.args[:-1], 1)) if e.op == "bwcp_shared" else e for e in shared)
    with pytest.raises(DecodeError, match="two sources"):
        RESNET.specs(two_sources)
    with pytest.raises(DecodeError, match="channel_map"):
        RESNET.specs((Edit("channel_map", "layer2.0.shortcut", (2, 16, 17)),))  # a source beyond 16 inputs


def test_resnet18_with_conv_bn_shortcuts_prunes_exactly():
    arch = Architecture("resnet18", (3, 32, 32), 10)
    torch.manual_seed(0)
    comp = BWCPCompressor(BWCPParams(), arch)
    model = arch.build(comp.bwcp_edits)
    model.load_state_dict(comp.to_bwcp(OrderedDict(arch.build().state_dict())))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BWCP):
                m.weight.copy_(torch.rand(m.num_features) + 0.2)
                m.bias.copy_(torch.randn(m.num_features) * 0.5)
    model.train()
    model(torch.randn(8, 3, 32, 32))
    model.eval()
    state = OrderedDict(model.state_dict())
    pruned_state, pruned_structure, metrics = comp.prune(state, comp.bwcp_edits)
    assert metrics["bwcp_channels_removed"] > 0
    pruned = arch.build(pruned_structure)
    pruned.load_state_dict(pruned_state)
    pruned.eval()
    assert pruned.layer2[0].downsample[0].out_channels == pruned.layer2[0].conv2.out_channels < 128
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(pruned(x), model(x), atol=1e-4, rtol=1e-4)
