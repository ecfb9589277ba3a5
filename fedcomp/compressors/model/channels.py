"""Channel pruning support shared by the channel-removing compressors (UDFC; BWCP to come).

- :func:`channel_graph` finds every conv whose output channels can be
  removed on their own: its pruning group in a dependency graph
  (`torch-pruning <https://github.com/VainF/Torch-Pruning>`_, which traces
  the model) is exactly the conv, one BatchNorm, channel-wise ops (ReLU,
  pooling) and one consuming Conv2d/Linear. Channels tied by a residual
  addition, a concatenation or a slice are left alone, as in the UDFC
  paper's baselines.
- The ``resize`` structure edit rebuilds a Conv2d / BatchNorm2d / Linear
  with other channel counts (args ``(out, in)``, or ``(features,)`` for a
  BatchNorm), so a receiver can build the thinner model before loading it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from fedcomp.compressors.model.structure import Architecture, Edit, Structure, structure_op

MAX_CHANNELS = 1 << 16


@dataclass(frozen=True)
class Triple:
    """A conv whose output channels feed only ``bn`` → ReLU (→ pooling) → ``next``'s input channels."""

    conv: str
    bn: str
    next: str


_PASS_THROUGH = ("Relu", "MaxPool", "AvgPool")


@dataclass(frozen=True)
class ChannelGraph:
    """What channel pruning needs to know about a model, from its dependency graph."""

    triples: tuple[Triple, ...]
    """Convs whose output channels are untied (prunable on their own)."""
    conv_bn: dict[str, str]
    """Every conv whose output goes straight (and only) into a BatchNorm → that BatchNorm."""


@functools.lru_cache(maxsize=16)
def channel_graph(arch: Architecture) -> ChannelGraph:
    """The :class:`ChannelGraph` of the configured model (traced once per architecture)."""
    import torch_pruning as tp  # imported here: only channel pruning needs the dependency graph

    model = arch.build().eval()
    names = {m: n for n, m in model.named_modules()}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *arch.input_shape))
    conv_bn = {}
    for name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d) and conv in graph.module2node:
            outputs = graph.module2node[conv].outputs
            if len(outputs) == 1 and isinstance(outputs[0].module, nn.BatchNorm2d):
                conv_bn[name] = names[outputs[0].module]
    out: list[Triple] = []
    for name, conv in model.named_modules():
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
            continue
        bns, consumers, ok = [], [], True
        for dep, _ in graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0]):
            target = dep.target.module
            if target is conv:
                continue
            if isinstance(target, nn.BatchNorm2d):
                bns.append(names[target])
            elif isinstance(target, (nn.Conv2d, nn.Linear)) and dep.handler.__name__ == "prune_in_channels":
                consumers.append(names[target])
            elif not any(op in type(target).__name__ or op in str(dep.target) for op in _PASS_THROUGH):
                ok = False  # an addition, concatenation, slice, ...: the channels are tied
        if ok and len(bns) == 1 and len(consumers) == 1 and conv_bn.get(name) == bns[0]:
            out.append(Triple(name, bns[0], consumers[0]))
    return ChannelGraph(tuple(out), conv_bn)


@structure_op("resize")
def resized(layer: nn.Module, args: tuple[int, ...]) -> nn.Module:
    """Structure edit ``resize``: the same layer with (out, in) channels, or (features,) for a BatchNorm."""
    if any(not 1 <= a <= MAX_CHANNELS for a in args):
        raise ValueError(f"channel counts must be in 1..{MAX_CHANNELS}, got {args}")
    if isinstance(layer, nn.BatchNorm2d) and len(args) == 1:
        return nn.BatchNorm2d(args[0], layer.eps, layer.momentum, layer.affine, layer.track_running_stats)
    if isinstance(layer, nn.Conv2d) and len(args) == 2 and layer.groups == 1:
        out, inp = args
        return nn.Conv2d(
            inp, out, layer.kernel_size, layer.stride, layer.padding, layer.dilation, bias=layer.bias is not None
        )
    if isinstance(layer, nn.Linear) and len(args) == 2:
        return nn.Linear(args[1], args[0], bias=layer.bias is not None)
    raise ValueError(f"cannot resize a {type(layer).__name__} to {args}")


def resize_edits(arch: Architecture, state: dict[str, torch.Tensor]) -> Structure:
    """``resize`` edits for the layers whose channel counts in ``state`` differ from the configured model's."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, tensor in state.items():
        layer, _, kind = name.rpartition(".")
        if kind == "weight" and tensor.ndim >= 2:
            shapes[layer] = (tensor.shape[0], tensor.shape[1])
        elif kind == "running_mean":
            shapes[layer] = (tensor.shape[0],)
    edits = []
    for name, module in arch.build().named_modules():
        if name not in shapes:
            continue
        if isinstance(module, nn.BatchNorm2d):
            base: tuple[int, ...] = (module.num_features,)
        elif isinstance(module, nn.Conv2d):
            base = (module.out_channels, module.in_channels)
        elif isinstance(module, nn.Linear):
            base = (module.out_features, module.in_features)
        else:
            continue
        if tuple(shapes[name]) != base:
            edits.append(Edit("resize", name, tuple(shapes[name])))
    return tuple(edits)
