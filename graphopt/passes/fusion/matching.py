"""Pattern-matching vocabulary shared by the fusion passes: readers, producers, constants.

A fusion matches a chain of nodes and replaces it with fewer. It may only consume a tensor inside
the chain when nothing outside the chain sees it: the tensor has exactly one reader and is not a
graph output (``sole_reader``). The end of a chain keeps its tensor object, so its readers, its
name and a graph output on it stay as they were.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import model_io

# gs leaves a node's domain None when the file does not set it.
DEFAULT_DOMAINS = (None, *model_io.DEFAULT_DOMAINS)


def is_default_domain(node: gs.Node) -> bool:
    return node.domain in DEFAULT_DOMAINS


def is_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(out is tensor for out in graph.outputs)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 else None


def sole_reader(graph: gs.Graph, tensor: gs.Tensor, op: str | tuple[str, ...] | None = None) -> gs.Node | None:
    """The one node reading ``tensor`` (of type ``op`` if given), if nothing else sees the tensor."""
    if len(tensor.outputs) != 1 or is_output(graph, tensor):
        return None
    node = tensor.outputs[0]
    if not is_default_domain(node) or (op is not None and node.op not in ((op,) if isinstance(op, str) else op)):
        return None
    if sum(1 for t in node.inputs if t is tensor) != 1:
        return None  # x·x reads the tensor twice: not a chain link
    return node


def produced_by(tensor: gs.Tensor, op: str | tuple[str, ...]) -> gs.Node | None:
    node = producer(tensor)
    ops = (op,) if isinstance(op, str) else op
    return node if node is not None and node.op in ops and is_default_domain(node) else None


def constant(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of a constant tensor (an initializer or a Constant node's ``value``), else None."""
    if tensor is None:
        return None
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is not None and node.op == "Constant" and "value" in node.attrs:
        return np.asarray(node.attrs["value"].values)
    return None


def scalar(tensor: gs.Tensor | None) -> float | None:
    value = constant(tensor)
    return float(value.ravel()[0]) if value is not None and value.size == 1 else None


def is_scalar(tensor: gs.Tensor | None, expected: float, rel: float = 1e-4) -> bool:
    value = scalar(tensor)
    return value is not None and abs(value - expected) <= rel * abs(expected)


def other_input(node: gs.Node, tensor: gs.Tensor) -> gs.Tensor | None:
    """For a two-input node reading ``tensor`` once, its other input."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    return b if a is tensor else a if b is tensor else None


def constant_operand(node: gs.Node) -> tuple[gs.Tensor, np.ndarray] | None:
    """(variable input, constant value) of a binary node with exactly one constant input."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    va, vb = constant(a), constant(b)
    if (va is None) == (vb is None):
        return None
    return (b, va) if va is not None else (a, vb)


def int_attr_or_input(node: gs.Node, attr: str, index: int) -> list[int] | None:
    """An int list given as attribute (older opsets) or as a constant input (newer ones)."""
    if attr in node.attrs:
        return [int(v) for v in np.ravel(node.attrs[attr])]
    if len(node.inputs) > index and not node.inputs[index].is_empty():
        value = constant(node.inputs[index])
        return None if value is None else [int(v) for v in value.ravel()]
    return None


def rank(tensor: gs.Tensor) -> int | None:
    return len(tensor.shape) if tensor.shape is not None else None


def disconnect(node: gs.Node) -> None:
    node.inputs.clear()
    node.outputs.clear()


class Namer:
    """Fresh tensor names: ``base``, else ``base_1``, ``base_2``..., never one the graph uses."""

    def __init__(self, graph: gs.Graph):
        self.used = set(graph.tensors().keys())
        for subgraph in graph.subgraphs(recursive=True):
            self.used.update(subgraph.tensors().keys())

    def __call__(self, base: str) -> str:
        name, i = base, 0
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name

    def constant(self, base: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(self(base), np.ascontiguousarray(values))

    def variable(self, base: str, like: gs.Tensor) -> gs.Variable:
        return gs.Variable(self(base), dtype=like.dtype, shape=like.shape)


def opset(graph: gs.Graph) -> int:
    return int(graph.opset)


def output_channels(layer: gs.Node, weight_shape: tuple[int, ...]) -> int:
    """Output channels of a Conv ([Cout, Cin/g, k...]) or ConvTranspose ([Cin, Cout/g, k...])."""
    if layer.op == "ConvTranspose":
        return weight_shape[1] * int(layer.attrs.get("group", 1))
    return weight_shape[0]


def scale_output_channels(layer: gs.Node, weight: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``weight`` (float64) of a Conv or ConvTranspose whose output channel o is multiplied by s[o]."""
    w = weight.astype(np.float64)
    if layer.op != "ConvTranspose":
        return w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    # W is [Cin, Cout/group, k...]; output channel g·Cout/group + j lives in W[g-th Cin block, j].
    group = int(layer.attrs.get("group", 1))
    grouped = w.reshape((group, -1) + w.shape[1:]) * s.reshape((group, 1, -1) + (1,) * (w.ndim - 2))
    return grouped.reshape(w.shape)


def per_channel(value: np.ndarray, out_rank: int, channels: int, axis: int = 1) -> np.ndarray | None:
    """``value`` as a vector over ``axis`` of a rank-``out_rank`` tensor with ``channels`` there,
    if it broadcasts to that tensor without enlarging it and varies along ``axis`` only; else None."""
    if value.ndim > out_rank:
        return None
    first = out_rank - value.ndim
    for j, dim in enumerate(value.shape):
        if dim != 1 and (first + j != axis or dim != channels):
            return None
    return np.broadcast_to(value.astype(np.float64).reshape(-1), (channels,)).copy() if value.size in (1, channels) \
        else None


def constant_input(layer: gs.Node, index: int) -> np.ndarray | None:
    if len(layer.inputs) <= index or not isinstance(layer.inputs[index], gs.Constant):
        return None
    return layer.inputs[index].values


def layer_bias(layer: gs.Node, channels: int) -> np.ndarray | None:
    """The layer's constant bias in float64 (zeros when it has none), or None if not constant."""
    if len(layer.inputs) < 3 or layer.inputs[2].is_empty():
        return np.zeros(channels)
    bias = constant_input(layer, 2)
    return None if bias is None else bias.astype(np.float64)


def set_weight_and_bias(layer: gs.Node, names: Namer, weight: np.ndarray | None, bias: np.ndarray, dtype) -> None:
    """New constant weight (unless None) and bias inputs of a Conv, ConvTranspose or Gemm."""
    base = layer.name or layer.op
    if weight is not None:
        layer.inputs[1] = names.constant(f"{base}/weight_folded", weight.astype(dtype))
    bias_tensor = names.constant(f"{base}/bias_folded", bias.astype(dtype))
    if len(layer.inputs) < 3:
        layer.inputs.append(bias_tensor)
    else:
        layer.inputs[2] = bias_tensor
