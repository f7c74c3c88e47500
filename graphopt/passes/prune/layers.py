"""The layers pruning works on, their weights as [output, reduction] matrices, and their inputs as columns.

A prunable layer is a default-domain Conv, Gemm or 2-D MatMul whose weight is a Constant. Its
*reduction matrix* has one row per output (channel) and one column per term of the dot product
that computes it:

- Conv ``W[Cout, Cin/g, kh, kw]`` -> ``[Cout, kh·kw·Cin/g]``, input channel innermost, so that N:M
  groups of consecutive columns are consecutive input channels at one kernel position (the layout
  sparse tensor cores read);
- Gemm ``B`` -> ``B`` with ``transB=1``, ``Bᵀ`` otherwise; MatMul ``W[K, N]`` -> ``Wᵀ``.

:meth:`Layer.columns` turns the layer's input activations into matching columns (im2col for Conv),
so that row · column is one output value: the statistics of the calibrated methods come from these.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.passes.fusion.matching import is_default_domain

PRUNABLE_OPS = ("Conv", "Gemm", "MatMul")
# Layers with fewer weights than this are left dense by default: pruning them saves nothing and
# costs accuracy (a 3x3 stem conv on one channel has 144 weights).
TINY_LAYER_PARAMS = 1024
DEFAULT_EXCLUDE = ("first", "last", "tiny")


@dataclasses.dataclass
class Layer:
    node: gs.Node

    @property
    def weight(self) -> gs.Constant:
        return self.node.inputs[1]

    @property
    def name(self) -> str:
        """The weight's tensor name: unique in the graph and kept by every pruning pass."""
        return self.weight.name

    @property
    def group(self) -> int:
        return int(self.node.attrs.get("group", 1)) if self.node.op == "Conv" else 1

    def matrix(self) -> np.ndarray:
        """The weight as a float64 [outputs, reduction] matrix (a copy)."""
        w = np.asarray(self.weight.values, dtype=np.float64)
        if self.node.op == "Conv":
            return w.transpose(0, *range(2, w.ndim), 1).reshape(w.shape[0], -1)
        if self.node.op == "Gemm" and self.node.attrs.get("transB", 0) == 1:
            return w.copy()
        return w.T.copy()

    def set_matrix(self, matrix: np.ndarray) -> None:
        """Write ``matrix`` (the layout of :meth:`matrix`) back into the weight, same name and dtype."""
        w = np.asarray(self.weight.values)
        if self.node.op == "Conv":
            spatial = w.shape[2:]
            values = matrix.reshape(w.shape[0], *spatial, w.shape[1]).transpose(0, w.ndim - 1, *range(1, w.ndim - 1))
        elif self.node.op == "Gemm" and self.node.attrs.get("transB", 0) == 1:
            values = matrix
        else:
            values = matrix.T
        self.weight.values = np.ascontiguousarray(values, dtype=w.dtype)

    def columns(self, x: np.ndarray) -> np.ndarray:
        """The layer's input ``x`` as [positions, group, reduction] float64 columns."""
        if self.node.op == "Conv":
            return _conv_columns(x.astype(np.float64), self.node, np.asarray(self.weight.values).shape)
        if self.node.op == "Gemm" and self.node.attrs.get("transA", 0) == 1:
            x = x.T
        return x.reshape(-1, 1, x.shape[-1]).astype(np.float64)


def _conv_columns(x: np.ndarray, node: gs.Node, w_shape: tuple[int, ...]) -> np.ndarray:
    """im2col of a 2-D Conv input [N, C, H, W]: [N·OH·OW, group, kh·kw·C/group], channel innermost."""
    if x.ndim != 4:
        raise ValueError(f"{node.name}: only 2-D Conv inputs are supported for calibrated pruning")
    group = int(node.attrs.get("group", 1))
    kh, kw = w_shape[2:]
    sh, sw = node.attrs.get("strides", [1, 1])
    dh, dw = node.attrs.get("dilations", [1, 1])
    top, left, bottom, right = _conv_pads(node, x.shape[2:], (kh, kw), (sh, sw), (dh, dw))
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    patches = np.stack([xp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
                        for i in range(kh) for j in range(kw)], axis=1)  # [N, kh·kw, C, OH, OW]
    n, positions, channels = patches.shape[:3]
    patches = patches.reshape(n, positions, group, channels // group, oh, ow)
    return patches.transpose(0, 4, 5, 2, 1, 3).reshape(n * oh * ow, group, positions * (channels // group))


def _conv_pads(node: gs.Node, size, kernel, strides, dilations) -> tuple[int, int, int, int]:
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for n, k, s, d in zip(size, kernel, strides, dilations):
            total = max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
            pads.append((total // 2, total - total // 2) if auto_pad == "SAME_UPPER" else (total - total // 2, total // 2))
        return pads[0][0], pads[1][0], pads[0][1], pads[1][1]
    if auto_pad == "VALID":
        return 0, 0, 0, 0
    top, left, bottom, right = node.attrs.get("pads", [0, 0, 0, 0])
    return top, left, bottom, right


def prunable_layers(graph: gs.Graph) -> list[Layer]:
    """Every layer with a constant weight that pruning can work on, in graph order."""
    layers = []
    for node in graph.nodes:
        if node.op not in PRUNABLE_OPS or not is_default_domain(node) or len(node.inputs) < 2:
            continue
        weight = node.inputs[1]
        if not isinstance(weight, gs.Constant) or not np.issubdtype(np.asarray(weight.values).dtype, np.floating):
            continue
        ndim = np.asarray(weight.values).ndim
        if (node.op == "Conv" and ndim != 4) or (node.op != "Conv" and ndim != 2):
            continue
        layers.append(Layer(node))
    return layers


def selected_layers(graph: gs.Graph, exclude=DEFAULT_EXCLUDE) -> list[Layer]:
    """The prunable layers minus ``exclude``: node names, weight names, op types, and the words
    ``first`` (the first prunable layer), ``last`` (the last) and ``tiny`` (< TINY_LAYER_PARAMS weights)."""
    layers = prunable_layers(graph)
    excluded = set(exclude)
    keep = []
    for index, layer in enumerate(layers):
        size = np.asarray(layer.weight.values).size
        if ({layer.node.name, layer.name, layer.node.op} & excluded
                or ("first" in excluded and index == 0) or ("last" in excluded and index == len(layers) - 1)
                or ("tiny" in excluded and size < TINY_LAYER_PARAMS)):
            continue
        keep.append(layer)
    return keep
