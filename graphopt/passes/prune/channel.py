"""Structured channel pruning: whole output channels of Conv/Gemm layers are removed, and every
node that reads or carries those channels is rewritten, so the graph physically shrinks."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.passes.fusion.matching import Namer, constant, is_default_domain, is_output, rank
from graphopt.passes.pipeline import PassContext, PassReport

NORMS = ("l1", "l2")
# Ops that keep the channel axis (axis 1) as it is, element by element or per channel.
CHANNELWISE_UNARY = frozenset({
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Identity", "Dropout",
    "Elu", "Selu", "Softplus", "Gelu", "Neg", "Abs", "Sqrt", "Exp", "Erf", "Mish",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
})
ELEMENTWISE_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "PRelu"})
REDUCE_OPS = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceL1"})


@dataclasses.dataclass
class ChannelSpace:
    """Tensors that share one set of channels, and the nodes that define, carry or read them.

    ``factors[name]`` is how many values each channel has in that tensor's axis 1: 1, or H·W after
    a Flatten/Reshape of an [N, C, H, W] tensor."""
    factors: dict[str, int] = dataclasses.field(default_factory=dict)
    tensors: list[gs.Variable] = dataclasses.field(default_factory=list)
    producers: list[gs.Node] = dataclasses.field(default_factory=list)
    followers: list[tuple[gs.Node, int]] = dataclasses.field(default_factory=list)  # (node, factor of its input)
    consumers: list[tuple[gs.Node, int]] = dataclasses.field(default_factory=list)
    reason: str | None = None

    def channels(self) -> int | None:
        counts = {_output_channels(node) for node in self.producers}
        return counts.pop() if len(counts) == 1 else None


class ChannelPruning:
    """Removes the ``targets[name]`` fraction (weight name -> ratio) of the output channels of Conv
    (group 1), Gemm and 2-D MatMul layers with constant weights, by the L1 or L2 norm of each
    channel's weights, and rewrites what reads them.

    A *channel space* is the set of tensors that carry one layer's output channels: it grows
    through channelwise ops (activations, pooling, BatchNormalization, depthwise Conv, Reduce*
    over spatial axes, Flatten/Reshape to [N, C·H·W]) and across elementwise ops with two
    variable inputs (a residual Add, a squeeze-excite Mul), which tie their inputs' spaces.

    Rules:
      1. producers (the layers writing the space): rows (Conv/Gemm transB) or columns of the weight
         and the bias entries of the removed channels go. Tied producers lose the same channels,
         chosen by the sum of their per-layer mean-normalised channel norms.
      2. BatchNormalization: scale, B, mean and var entries go. A depthwise Conv (group = C,
         one input channel per group) follows its input: its weight and bias entries go and
         ``group`` becomes the new C.
      3. constants of elementwise ops that vary along the channel axis are sliced; scalars and
         constants constant along it stay.
      4. consumers (Conv group 1, Gemm/MatMul reading the space as their input): their input
         channels (Conv weight axis 1; Gemm/MatMul rows of the reduction, H·W per channel after a
         Flatten) go. A Reshape target that spells C·H·W out is rewritten.
      5. the space's tensors get their new channel count in their shapes; weights keep their names
         unless another node shares them (then the pruned copy gets a fresh name).
      6. at least one channel is kept.

    Must not fire on a space (noted in the report, nothing changes):
      7. that reaches a graph input or output, or a node not listed above (Concat, Transpose,
         Split, Shape, a grouped non-depthwise Conv, a Reduce over the channel axis...);
      8. with a producer not in ``targets`` (tied channels are pruned together or not at all);
      9. whose producers disagree on the channel count, or whose constants do not broadcast per channel.
    """

    name = "channel-pruning"

    def __init__(self, targets: dict[str, float], norm: str = "l2"):
        if norm not in NORMS:
            raise ValueError(f"unknown channel norm '{norm}'")
        self.targets = dict(targets)
        self.norm = norm
        self.reshaped: dict[str, tuple[tuple, tuple]] = {}

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        plans, done = [], set()
        for node in graph.nodes:
            if not _is_channel_layer(node) or id(node) in done:
                continue
            space = channel_space(graph, node.outputs[0])
            done.update(id(p) for p in space.producers)
            keep = self._try_plan(space, node, report)
            if keep is not None:
                plans.append((space, keep))
        names = Namer(graph)
        for space, keep in plans:
            self._rewrite(space, keep, names, report)
        return report

    def _try_plan(self, space: ChannelSpace, seed: gs.Node, report: PassReport) -> np.ndarray | None:
        """Indices of the channels to keep, or None when the space cannot or need not shrink."""
        names = [p.inputs[1].name for p in space.producers] or [seed.inputs[1].name]
        if space.reason is None and any(name not in self.targets for name in names):
            space.reason = "excluded, or tied to an excluded layer"
        channels = space.channels()
        if space.reason is None and channels is None:
            space.reason = "tied layers disagree on the channel count"
        if space.reason is None:
            space.reason = _check_constants(space, channels)
        if space.reason is not None:
            report.notes.append(f"{', '.join(names)}: channels kept ({space.reason})")
            return None
        ratio = min(self.targets[name] for name in names)
        kept = max(1, int(round(channels * (1 - ratio))))
        if kept >= channels:
            return None
        scores = sum(norms / max(float(norms.mean()), np.finfo(np.float64).tiny)
                     for norms in (self._channel_norms(p) for p in space.producers))
        return np.sort(np.argsort(-scores, kind="stable")[:kept])

    def _channel_norms(self, layer: gs.Node) -> np.ndarray:
        w = np.asarray(layer.inputs[1].values, dtype=np.float64)
        axis = _output_axis(layer)
        rows = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        return np.abs(rows).sum(axis=1) if self.norm == "l1" else np.sqrt((rows * rows).sum(axis=1))

    def _rewrite(self, space: ChannelSpace, keep: np.ndarray, names: Namer, report: PassReport) -> None:
        channels = space.channels()
        for layer in space.producers:
            self._slice_input(layer, 1, keep, _output_axis(layer), names)
            if len(layer.inputs) > 2 and not layer.inputs[2].is_empty():
                bias = constant(layer.inputs[2])
                if bias is not None and bias.size == channels:
                    self._slice_input(layer, 2, keep, bias.ndim - 1, names)
            report.record("output channels", layer.inputs[1].name, [layer.inputs[1].name])
        for node, factor in space.followers:
            self._rewrite_follower(node, keep, channels, factor, names)
        for node, factor in space.consumers:
            features = (keep[:, None] * factor + np.arange(factor)[None, :]).ravel()
            self._slice_input(node, 1, features, _input_axis(node), names)
            report.record("input channels", node.inputs[1].name, [node.inputs[1].name])
        for tensor in space.tensors:
            if tensor.shape is not None and len(tensor.shape) > 1:
                old = tuple(tensor.shape)
                tensor.shape = [*old[:1], len(keep) * space.factors[tensor.name], *old[2:]]
                self.reshaped[tensor.name] = (self.reshaped.get(tensor.name, (old,))[0], tuple(tensor.shape))
        report.notes.append(f"{', '.join(p.inputs[1].name for p in space.producers)}: {channels} -> {len(keep)} channels")

    def _rewrite_follower(self, node: gs.Node, keep: np.ndarray, channels: int, factor: int, names: Namer) -> None:
        if node.op == "BatchNormalization":
            for index in range(1, 5):
                self._slice_input(node, index, keep, 0, names)
        elif node.op == "Conv":  # depthwise
            self._slice_input(node, 1, keep, 0, names)
            if len(node.inputs) > 2 and not node.inputs[2].is_empty():
                self._slice_input(node, 2, keep, 0, names)
            node.attrs["group"] = len(keep)
        elif node.op == "Reshape":
            target = constant(node.inputs[1]).copy()
            target[target == channels * factor] = len(keep) * factor
            self._set_input(node, 1, target, names)
        else:  # elementwise with constant operands
            out_rank = rank(node.outputs[0])
            for index, tensor in enumerate(node.inputs):
                value = constant(tensor)
                axis = None if value is None else value.ndim - (out_rank - 1)
                if value is not None and axis >= 0 and value.shape[axis] == channels:
                    self._slice_input(node, index, keep, axis, names)

    def _slice_input(self, node: gs.Node, index: int, keep: np.ndarray, axis: int, names: Namer) -> None:
        self._set_input(node, index, np.take(constant(node.inputs[index]), keep, axis=axis), names)

    def _set_input(self, node: gs.Node, index: int, values: np.ndarray, names: Namer) -> None:
        tensor = node.inputs[index]
        old = tuple(np.asarray(constant(tensor)).shape)
        if isinstance(tensor, gs.Constant) and len(tensor.outputs) == 1:
            tensor.values = np.ascontiguousarray(values)
        else:
            tensor = names.constant(tensor.name, values)
            node.inputs[index] = tensor
        self.reshaped[tensor.name] = (self.reshaped.get(tensor.name, (old,))[0], tuple(values.shape))


def _is_channel_layer(node: gs.Node) -> bool:
    """A layer whose output channels can be removed: Conv group 1, Gemm, 2-D MatMul, constant weight."""
    if not is_default_domain(node) or len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return False
    w = np.asarray(node.inputs[1].values)
    if node.op == "Conv":
        return w.ndim >= 3 and int(node.attrs.get("group", 1)) == 1
    if node.op == "Gemm":
        return w.ndim == 2 and node.attrs.get("transA", 0) == 0
    return node.op == "MatMul" and w.ndim == 2 and rank(node.inputs[0]) == 2


def _is_depthwise(node: gs.Node) -> bool:
    if node.op != "Conv" or not isinstance(node.inputs[1], gs.Constant):
        return False
    w = np.asarray(node.inputs[1].values)
    group = int(node.attrs.get("group", 1))
    return group > 1 and w.shape[1] == 1 and w.shape[0] == group


def _output_channels(layer: gs.Node) -> int:
    return np.asarray(layer.inputs[1].values).shape[_output_axis(layer)]


def _output_axis(layer: gs.Node) -> int:
    """Axis of the weight that indexes output channels."""
    return 0 if layer.op == "Conv" or (layer.op == "Gemm" and layer.attrs.get("transB", 0) == 1) else 1


def _input_axis(layer: gs.Node) -> int:
    """Axis of the weight that indexes the reduction (input channels / features)."""
    return 1 - _output_axis(layer) if layer.op != "Conv" else 1


def channel_space(graph: gs.Graph, seed: gs.Variable) -> ChannelSpace:
    """The channel space of ``seed`` (see ChannelPruning); ``reason`` says why it cannot shrink."""
    space = ChannelSpace()
    queue: list[tuple[gs.Tensor, int]] = [(seed, 1)]
    visited: set[tuple[int, int]] = set()
    while queue and space.reason is None:
        tensor, factor = queue.pop()
        if tensor.name in space.factors:
            if space.factors[tensor.name] != factor:
                space.reason = f"{tensor.name} is reached with two layouts"
            continue
        space.factors[tensor.name] = factor
        space.tensors.append(tensor)
        if is_output(graph, tensor) or any(t is tensor for t in graph.inputs):
            space.reason = f"{tensor.name} is a graph input or output"
            break
        for node in [*tensor.inputs, *tensor.outputs]:
            # A layer can write the space and read it (a residual block's second conv): one visit per role.
            key = (id(node), id(tensor)) if _is_channel_layer(node) else (id(node), 0)
            if key not in visited:
                visited.add(key)
                space.reason = _visit(node, tensor, factor, space, queue)
                if space.reason is not None:
                    break
    return space


def _visit(node: gs.Node, tensor: gs.Tensor, factor: int, space: ChannelSpace, queue: list) -> str | None:
    """Add ``node`` (reached through ``tensor``) to ``space``; a reason if it blocks the space."""
    where = f"{node.op} {node.name}"
    if not is_default_domain(node):
        return f"{where} is not a default-domain op"
    if _is_channel_layer(node):
        if node.outputs[0] is tensor and factor == 1:
            space.producers.append(node)
            return None
        if node.inputs[0] is tensor and (node.op != "Conv" or factor == 1):
            space.consumers.append((node, factor))
            return None
        return f"{where} reads the channels as a weight"
    if _is_depthwise(node) or node.op == "BatchNormalization":
        if factor != 1:
            return f"{where} after a flatten"
        space.followers.append((node, factor))
        queue += [(node.inputs[0], 1), (node.outputs[0], 1)]
        return None
    if node.op in CHANNELWISE_UNARY:
        queue += [(node.inputs[0], factor), (node.outputs[0], factor)]
        return None
    if node.op in REDUCE_OPS:
        return _visit_reduce(node, factor, queue)
    if node.op in ELEMENTWISE_BINARY:
        return _visit_elementwise(node, factor, space, queue)
    if node.op in ("Flatten", "Reshape"):
        return _visit_flatten(node, tensor, factor, space, queue)
    return f"{where} reads or writes {tensor.name}"


def _visit_reduce(node: gs.Node, factor: int, queue: list) -> str | None:
    x = node.inputs[0]
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        axes = constant(node.inputs[1])
    if axes is None or rank(x) is None or factor != 1:
        return f"{node.op} {node.name} may reduce the channel axis"
    if 1 in {int(a) % rank(x) for a in np.ravel(axes)}:
        return f"{node.op} {node.name} reduces the channel axis"
    queue += [(x, 1), (node.outputs[0], 1)]
    return None


def _visit_elementwise(node: gs.Node, factor: int, space: ChannelSpace, queue: list) -> str | None:
    out_rank = rank(node.outputs[0])
    has_constant = False
    for operand in node.inputs:
        if constant(operand) is not None:
            has_constant = True
        elif rank(operand) is None or rank(operand) != out_rank:
            return f"{node.op} {node.name} broadcasts {operand.name} over the channel axis"
        else:
            queue.append((operand, factor))
    if has_constant:
        if out_rank is None:
            return f"{node.op} {node.name}: output rank unknown"
        space.followers.append((node, factor))
    queue.append((node.outputs[0], factor))
    return None


def _visit_flatten(node: gs.Node, tensor: gs.Tensor, factor: int, space: ChannelSpace, queue: list) -> str | None:
    x, y = node.inputs[0], node.outputs[0]
    spatial = x.shape[2:] if x.shape is not None else None
    if spatial is None or not all(isinstance(d, int) for d in spatial) or rank(y) != 2:
        return f"{node.op} {node.name}: not a flatten of known spatial size"
    if node.op == "Flatten" and int(node.attrs.get("axis", 1)) != 1:
        return f"Flatten {node.name} does not keep axis 0"
    if node.op == "Reshape":
        target = constant(node.inputs[1])
        if target is None or target.size != 2:
            return f"Reshape {node.name}: target not a constant [N, C·H·W]"
    size = int(np.prod(spatial, dtype=np.int64))
    if node.op == "Reshape":
        space.followers.append((node, factor * size if tensor is x else factor))
    if tensor is x:
        queue.append((y, factor * size))
    elif factor % size == 0:
        queue.append((x, factor // size))
    else:
        return f"{node.op} {node.name}: layout does not match"
    return None


def _check_constants(space: ChannelSpace, channels: int) -> str | None:
    """Rule 9: every elementwise constant broadcasts per channel (or not at all) along axis 1."""
    for node, factor in space.followers:
        if node.op not in ELEMENTWISE_BINARY:
            continue
        out_rank = rank(node.outputs[0])
        for tensor in node.inputs:
            value = constant(tensor)
            if value is None or value.size == 1:
                continue
            axis = value.ndim - (out_rank - 1)
            if factor != 1 or axis < 0 or value.shape[axis] != channels or value.size != channels:
                return f"{node.op} {node.name}: constant {tensor.name} is not per channel"
    return None
