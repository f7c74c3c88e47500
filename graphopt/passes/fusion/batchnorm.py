"""BatchNormalization folding: inference BN becomes part of the layer before it, or Mul+Add."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.passes.fusion.matching import (
    Namer, constant_input, disconnect, is_default_domain, layer_bias, output_channels, producer, rank,
    scale_output_channels, set_weight_and_bias, sole_reader,
)
from graphopt.passes.pipeline import PassContext, PassReport


class BatchNormFolding:
    """Folds inference-mode ``y = BatchNormalization(x, scale, B, mean, var)`` away. With
    ``s = scale / sqrt(var + epsilon)`` and ``t = B - mean·s``, BN is ``y = x·s + t`` per channel
    (axis 1). Folding is done in float64 and cast back to the weight's dtype.

    Rules:
      1. x = Conv(a, W[, b]) with constant W (and b): W[o] *= s[o], b = b·s + t; the Conv writes y.
      2. x = ConvTranspose(a, W[, b]) with constant W (and b): likewise, W being [Cin, Cout/group, k...].
      3. x = Gemm(a, B[, C]) with constant B (and C): the output column n of B is scaled by s[n];
         C becomes beta·C·s + t and beta 1.
      4. x = MatMul(a, W), W a constant matrix and x of rank 2 (BN's channel axis is then
         MatMul's last axis): becomes Gemm(a, W·s, t).
      5. any other x of known rank (a lone BN): y = Mul(x, s) then Add(·, t), with s and t shaped
         [C, 1, ...] so that they broadcast over axis 1.

    Must not fire:
      6. training mode: ``training_mode=1``, ``is_test=0`` (opset < 7), or any of the running
         mean/var outputs read or a graph output; ``spatial=0`` (opset < 9: per-activation
         statistics).
      7. scale, B, mean or var not constant.
      8. rules 1-4 when x has another reader or is a graph output (the pre-BN value is still
         needed), or when the weights or bias are not constant; rule 5 then applies instead.
      9. rule 4 when MatMul's output is not of rank 2 (axis 1 is not the matrix column) or W is
         not 2-D: rule 5 applies.
     10. rule 5 when x's rank is unknown.

    Provenance: the folded layer writes BN's own output tensor, so names keep their meaning;
    the pre-BN tensor disappears and nothing stands for it.
    """

    name = "batchnorm-folding"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        names = Namer(graph)
        for node in list(graph.nodes):
            if node.op == "BatchNormalization" and is_default_domain(node):
                self._try_fold(graph, node, names, report)
        return report

    def _try_fold(self, graph: gs.Graph, bn: gs.Node, names: Namer, report: PassReport) -> bool:
        affine = _inference_affine(graph, bn)
        if affine is None:
            return False
        s, t = affine
        x, y = bn.inputs[0], bn.outputs[0]
        layer = producer(x)
        if layer is not None and sole_reader(graph, x) is bn and is_default_domain(layer):
            fold = {"Conv": _fold_into_conv, "ConvTranspose": _fold_into_conv,
                    "Gemm": _fold_into_gemm, "MatMul": _fold_into_matmul}.get(layer.op)
            rule = f"{layer.op}+BatchNormalization"
            if fold is not None and fold(layer, s, t, names):
                layer.outputs[0] = y
                disconnect(bn)
                report.record(rule, replacement=y.name, originals=[y.name])
                return True
        return self._try_as_mul_add(graph, bn, s, t, names, report)

    def _try_as_mul_add(self, graph: gs.Graph, bn: gs.Node, s: np.ndarray, t: np.ndarray, names: Namer,
                        report: PassReport) -> bool:
        x, y = bn.inputs[0], bn.outputs[0]
        r = rank(x)
        if r is None or r < 2 or (isinstance(x.shape[1], int) and x.shape[1] != s.size):
            return False
        dtype = bn.inputs[1].values.dtype
        shape = (-1,) + (1,) * (r - 2)
        scaled = names.variable(f"{y.name}/scaled", y)
        scale = names.constant(f"{y.name}/scale", s.reshape(shape).astype(dtype))
        shift = names.constant(f"{y.name}/shift", t.reshape(shape).astype(dtype))
        disconnect(bn)
        graph.nodes += [gs.Node("Mul", f"{bn.name}/Mul", inputs=[x, scale], outputs=[scaled]),
                        gs.Node("Add", f"{bn.name}/Add", inputs=[scaled, shift], outputs=[y])]
        report.record("BatchNormalization→Mul+Add", replacement=y.name, originals=[y.name])
        return True


def _inference_affine(graph: gs.Graph, bn: gs.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(s, t) in float64 with y = x·s + t per channel, or None if BN cannot be folded."""
    if bn.attrs.get("training_mode", 0) == 1 or bn.attrs.get("is_test", 1) == 0 or bn.attrs.get("spatial", 1) == 0:
        return None  # training, or (before opset 9) statistics per activation rather than per channel
    if any(out.outputs or any(o is out for o in graph.outputs) for out in bn.outputs[1:] if not out.is_empty()):
        return None
    if len(bn.inputs) != 5 or not all(isinstance(t, gs.Constant) for t in bn.inputs[1:]):
        return None
    scale, bias, mean, var = (t.values.astype(np.float64).ravel() for t in bn.inputs[1:])
    s = scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    return s, bias - mean * s


def _fold_into_conv(layer: gs.Node, s: np.ndarray, t: np.ndarray, names: Namer) -> bool:
    weight = constant_input(layer, 1)
    if weight is None or weight.ndim < 3 or output_channels(layer, weight.shape) != s.size:
        return False
    if layer.op == "ConvTranspose" and weight.shape[0] % int(layer.attrs.get("group", 1)):
        return False
    bias = layer_bias(layer, s.size)
    if bias is None:
        return False
    set_weight_and_bias(layer, names, scale_output_channels(layer, weight, s), bias * s + t, weight.dtype)
    return True


def _fold_into_gemm(layer: gs.Node, s: np.ndarray, t: np.ndarray, names: Namer) -> bool:
    b = constant_input(layer, 1)
    if b is None or b.ndim != 2:
        return False
    trans_b = layer.attrs.get("transB", 0) == 1
    if (b.shape[0] if trans_b else b.shape[1]) != s.size:
        return False
    has_c = len(layer.inputs) > 2 and not layer.inputs[2].is_empty()
    c = constant_input(layer, 2) if has_c else np.zeros(1)
    if c is None or c.ndim > 2:
        return False
    alpha_b = b.astype(np.float64) * (s[:, None] if trans_b else s[None, :])
    c = float(layer.attrs.get("beta", 1.0)) * c.astype(np.float64) * s + t
    layer.attrs["beta"] = 1.0
    set_weight_and_bias(layer, names, alpha_b, c, b.dtype)
    return True


def _fold_into_matmul(layer: gs.Node, s: np.ndarray, t: np.ndarray, names: Namer) -> bool:
    w = constant_input(layer, 1)
    a = layer.inputs[0]
    if w is None or w.ndim != 2 or w.shape[1] != s.size or rank(a) != 2 or rank(layer.outputs[0]) != 2:
        return False
    layer.op = "Gemm"
    layer.attrs = {}
    set_weight_and_bias(layer, names, w.astype(np.float64) * s[None, :], t, w.dtype)
    return True
