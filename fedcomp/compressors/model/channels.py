"""Channel pruning support shared by the channel-removing compressors (UDFC, BWCP).

- :func:`channel_graph` finds every conv whose output channels can be
  removed on their own: its pruning group in a dependency graph
  (`torch-pruning <https://github.com/VainF/Torch-Pruning>`_, which traces
  the model) is exactly the conv, one BatchNorm, channel-wise ops (ReLU,
  pooling) and one consuming Conv2d/Linear. Channels tied by a residual
  addition, a concatenation or a slice are left alone by UDFC, as in its
  paper's baselines.
- It also finds the residual **streams**: channels tied by additions, whose
  group is conv–BatchNorm pairs summed into them (the block outputs and
  conv–BN shortcuts), their consumers, and parameter-free shortcuts that map
  channels between streams (a module with ``channel_sources()``, such as
  ResNet-20's zero-padding shortcut; registered with torch-pruning so the
  graph ends there). BWCP prunes a stream's channels with one shared mask.
- The ``channel_map`` edit is such a shortcut after pruning: subsample, then
  copy chosen input channels to the outputs.
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
class Stream:
    """Channels tied by residual additions, prunable together (one mask for all of them)."""

    members: tuple[tuple[str, str], ...]
    """(conv, BatchNorm) pairs whose outputs are summed into the stream, in module order (the first: its source)."""
    consumers: tuple[str, ...]
    """Conv2d / Linear layers reading the stream's channels."""
    maps_in: tuple[str, ...]
    """Channel-mapping shortcuts writing into the stream."""
    maps_out: tuple[str, ...]
    """Channel-mapping shortcuts reading from it."""


@dataclass(frozen=True)
class ChannelGraph:
    """What channel pruning needs to know about a model, from its dependency graph."""

    triples: tuple[Triple, ...]
    """Convs whose output channels are untied (prunable on their own)."""
    conv_bn: dict[str, str]
    """Every conv whose output goes straight (and only) into a BatchNorm → that BatchNorm."""
    streams: tuple[Stream, ...] = ()
    """Residual streams whose every member is a conv–BatchNorm pair (others are left alone)."""


def _map_pruner():  # noqa: ANN202 - a torch-pruning pruning function, built when torch-pruning is imported
    """Tells torch-pruning that a channel-mapping shortcut ends a group (its in and out channels are independent)."""
    import torch_pruning as tp

    class MapPruner(tp.pruner.function.BasePruningFunc):
        def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
            return layer

        def prune_in_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
            return layer

        def get_out_channels(self, layer: nn.Module) -> None:
            return None

        def get_in_channels(self, layer: nn.Module) -> None:
            return None

    return MapPruner()


@functools.lru_cache(maxsize=16)
def channel_graph(arch: Architecture) -> ChannelGraph:
    """The :class:`ChannelGraph` of the configured model (traced once per architecture)."""
    import torch_pruning as tp  # imported here: only channel pruning needs the dependency graph

    model = arch.build().eval()
    names = {m: n for n, m in model.named_modules()}
    mappers = {type(m) for m in model.modules() if hasattr(m, "channel_sources")}
    graph = tp.DependencyGraph().build_dependency(
        model,
        example_inputs=torch.zeros(1, *arch.input_shape),
        customized_pruners=dict.fromkeys(mappers, _map_pruner()),
    )
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
    untied = {t.conv for t in out}
    streams: list[Stream] = []
    seen: set[str] = set()
    for name in conv_bn:
        if name not in untied and name not in seen:
            stream = _stream(graph, model, names, conv_bn, model.get_submodule(name))
            seen.add(name)
            if stream:
                seen.update(c for c, _ in stream.members)
                streams.append(stream)
    return ChannelGraph(tuple(out), conv_bn, tuple(streams))


_STREAM_OPS = ("Relu", "Add", "Mean", "AvgPool", "MaxPool", "Reshape", "Flatten", "View", "TBackward")
"""Channel-wise nodes a stream may pass through (TBackward: the transposed weight of a Linear consumer)."""


def _feeds_mapper(node) -> bool:  # noqa: ANN001 - a torch-pruning node
    """A slice whose only readers are channel-mapping shortcuts (their own spatial subsampling, traced outside)."""
    return bool(node.outputs) and all(hasattr(o.module, "channel_sources") or _feeds_mapper(o) for o in node.outputs)


def _stream(graph, model: nn.Module, names: dict, conv_bn: dict[str, str], conv: nn.Conv2d) -> Stream | None:  # noqa: ANN001
    """The residual stream ``conv`` writes into, if every layer of its pruning group is one BWCP can handle."""
    import torch_pruning as tp

    convs, bns, consumers, maps_in, maps_out = [], set(), [], [], []
    for dep, _ in graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0]):
        target, handler = dep.target.module, dep.handler.__name__
        name = names.get(target)
        if name is None:
            if not any(op in str(dep.target) for op in _STREAM_OPS) and not (
                "Slice" in str(dep.target) and _feeds_mapper(dep.target)
            ):
                return None  # a concatenation, slice, ...: not a plain stream
        elif hasattr(target, "channel_sources"):
            (maps_in if handler == "prune_out_channels" else maps_out).append(name)
        elif isinstance(target, nn.BatchNorm2d):
            bns.add(name)
        elif isinstance(target, nn.Conv2d) and target.groups == 1 and handler == "prune_out_channels":
            convs.append(name)
        elif isinstance(target, (nn.Conv2d, nn.Linear)) and handler == "prune_in_channels":
            consumers.append(name)
        elif not isinstance(target, (nn.ReLU, nn.Identity, nn.AdaptiveAvgPool2d, nn.Flatten)):
            return None
    width = model.get_submodule(conv_bn[names[conv]]).num_features
    order = {n: i for i, n in enumerate(names.values())}
    if any(conv_bn.get(c) not in bns for c in convs) or len(bns) != len(convs):
        return None  # a BatchNorm without its own conv, or a conv without one
    for c in consumers:  # 1:1 channels only (a flatten of a spatial map is not)
        layer = model.get_submodule(c)
        if (layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels) != width:
            return None
    return Stream(
        tuple((c, conv_bn[c]) for c in sorted(convs, key=order.get)),
        tuple(sorted(consumers, key=order.get)),
        tuple(maps_in),
        tuple(maps_out),
    )


class ChannelMap(nn.Module):
    """A parameter-free shortcut after pruning: subsample by ``stride``, output j = input ``sources[j]`` (or 0)."""

    def __init__(self, stride: int, in_channels: int, sources: list[int]) -> None:
        super().__init__()
        self.stride = stride
        self.in_channels = in_channels
        self.sources = list(sources)
        index = torch.tensor([s if s >= 0 else in_channels for s in sources], dtype=torch.long)
        self.register_buffer("index", index, persistent=False)

    def channel_sources(self) -> list[int]:
        return list(self.sources)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        padded = torch.cat([x, x.new_zeros(x.shape[0], 1, *x.shape[2:])], 1)  # channel in_channels: zeros
        return padded.index_select(1, self.index.to(x.device))


@structure_op("channel_map")
def _channel_map(layer: nn.Module, args: tuple[int, ...]) -> nn.Module:
    """Structure edit ``channel_map`` (stride, in channels, 1 + source of each output or 0 for a zero channel)."""
    if not hasattr(layer, "channel_sources") or not hasattr(layer, "stride") or len(args) < 3:
        raise ValueError("channel_map replaces a channel-mapping shortcut and takes (stride, in, sources...)")
    stride, inputs, *sources = args
    if not (1 <= stride <= 16 and 1 <= inputs <= MAX_CHANNELS and len(sources) <= MAX_CHANNELS):
        raise ValueError(f"channel_map arguments out of range: stride {stride}, {inputs} inputs")
    if any(s > inputs for s in sources):
        raise ValueError(f"channel_map: a source beyond the {inputs} input channels")
    return ChannelMap(stride, inputs, [s - 1 for s in sources])


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
