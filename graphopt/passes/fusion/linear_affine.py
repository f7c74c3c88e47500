"""Affine folding: constant Mul/Div/Add/Sub around Conv, ConvTranspose, Gemm and MatMul."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.passes.fusion.matching import (
    Namer, constant_input, constant_operand, disconnect, is_default_domain, layer_bias,
    output_channels, per_channel, produced_by, rank, scale_output_channels, set_weight_and_bias, sole_reader,
)
from graphopt.passes.pipeline import PassContext, PassReport

CONVS = ("Conv", "ConvTranspose")


class AffineFolding:
    """Folds element-wise constant arithmetic into the weights and bias of the layer next to it.
    ``c`` below is a constant; "per-channel" means it broadcasts to the layer's output (or input)
    along the channel axis 1 only, without enlarging it (a scalar qualifies).

    Rules:
      1. y = Add(Conv(x), c) (or Sub, either order for Add) with c per-output-channel and the
         Conv's bias constant or absent: bias += c, the Conv writes y. Also for ConvTranspose.
      2. y = Mul(Conv(x), c) or Div(Conv(x), c), c per-output-channel, constant weight and bias:
         W and bias scaled per output channel. Also for ConvTranspose.
      3. y = Add(Gemm(a, B, C), c), C constant or absent, c broadcasting to Gemm's [M, N] output
         without enlarging it: C = beta·C + c, beta 1.
      4. y = Add(MatMul(a, B), c), a and B of rank 2, c as in 3: y = Gemm(a, B, c) (one node,
         the same MLAS call on onnxruntime). Of higher rank the pair stays: standard MatMul has
         no bias, and a Gemm between two Reshapes would be more nodes, not fewer.
      5. z = Conv(Mul(x, c)) (or Div), c per-input-channel, constant weight: W scaled per input
         channel (zero padding is still zero). Also z = Conv(Add(x, c)) (or Sub), c per-input-
         channel, when the Conv pads nothing (a padded border would see 0, not c): bias += Σ W·c.
      6. z = Conv(Add(Mul(x, s), c)) (or Sub, or Div by s) of a padded Conv, s per-input-channel
         with no zero: = Conv_{W·s}(Add(x, c/s)), the scale moves into W and the Mul goes (the
         border still sees 0). Paddle's "scale and shift" after an activation is this chain.

    Must not fire:
      7. a tensor between two nodes of the chain has another reader or is a graph output.
      8. the weight (rules 2, 5, 6) or the bias or C (all rules) is not constant.
      9. c does not broadcast as stated (e.g. varies along a spatial axis, or would enlarge the
         output), or the variable side of the Add/Mul is not the layer's.
     10. Div by a c with a zero, rule 6 with a zero in s; Sub c - Conv(x) (the sign would flip).
     11. rules 5-6 when the layer is a ConvTranspose (its input channels mix differently); rule
         5 for Add when any pad is nonzero or ``auto_pad`` is SAME_* (rule 6 may then apply).

    Provenance: the layer writes the Add/Mul's output tensor, so names keep their meaning.
    """

    name = "affine-folding"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        names = Namer(graph)
        for node in list(graph.nodes):
            if not is_default_domain(node) or not node.outputs:
                continue
            if node.op in CONVS:
                while self._try_fold_after_conv(graph, node, names, report):
                    pass
                if node.op == "Conv":
                    while self._try_fold_before_conv(graph, node, names, report):
                        pass
            elif node.op in ("Gemm", "MatMul"):
                self._try_fold_add_after_gemm(graph, node, names, report)
        return report

    def _try_fold_after_conv(self, graph: gs.Graph, conv: gs.Node, names: Namer, report: PassReport) -> bool:
        x = conv.outputs[0]
        node = sole_reader(graph, x, ("Add", "Sub", "Mul", "Div"))
        operand = constant_operand(node) if node is not None else None
        weight = constant_input(conv, 1)
        if operand is None or operand[0] is not x or rank(conv.inputs[1]) is None:
            return False
        if node.op == "Sub" and node.inputs[0] is not x:
            return False
        channels = _conv_out_channels(conv)
        c = per_channel(operand[1], rank(conv.inputs[1]), channels) if channels else None
        bias = layer_bias(conv, channels) if channels else None
        if c is None or bias is None:
            return False
        if node.op in ("Add", "Sub"):
            set_weight_and_bias(conv, names, None, bias + (c if node.op == "Add" else -c), _dtype(conv))
        else:
            if weight is None or (node.op == "Div" and not np.all(c)):
                return False
            c = c if node.op == "Mul" else 1.0 / c
            set_weight_and_bias(conv, names, scale_output_channels(conv, weight, c), bias * c, weight.dtype)
        return _absorb(conv, node, report)

    def _try_fold_before_conv(self, graph: gs.Graph, conv: gs.Node, names: Namer, report: PassReport) -> bool:
        node = produced_by(conv.inputs[0], ("Add", "Sub", "Mul", "Div"))
        weight = constant_input(conv, 1)
        if node is None or weight is None or sole_reader(graph, node.outputs[0]) is not conv:
            return False
        operand = constant_operand(node)
        if operand is None or (node.op in ("Sub", "Div") and node.inputs[0] is not operand[0]):
            return False
        x, value = operand
        c = _per_input_channel(conv, weight, value)
        bias = layer_bias(conv, weight.shape[0])
        if c is None or bias is None or rank(x) != weight.ndim:
            return False
        w = weight.astype(np.float64)
        if node.op in ("Mul", "Div"):
            if node.op == "Div" and not np.all(c):
                return False
            set_weight_and_bias(conv, names, w * _by_weight_layout(conv, weight, c if node.op == "Mul" else 1.0 / c),
                                bias, weight.dtype)
        elif not _pads_nothing(conv):
            return self._try_fold_scale_through_shift(graph, conv, node, c, names, report)
        else:
            shift = (w * _by_weight_layout(conv, weight, c if node.op == "Add" else -c)).reshape(weight.shape[0], -1)
            set_weight_and_bias(conv, names, None, bias + shift.sum(axis=1), weight.dtype)
        conv.inputs[0] = x
        disconnect(node)
        report.record(f"{node.op}+Conv")
        return True

    def _try_fold_scale_through_shift(self, graph: gs.Graph, conv: gs.Node, shift: gs.Node, c: np.ndarray,
                                      names: Namer, report: PassReport) -> bool:
        """Conv(Mul(x, s) + c) = Conv_{W·s}(x + c/s) for a padded Conv: the scale moves into W."""
        scaled = constant_operand(shift)[0]
        mul = produced_by(scaled, ("Mul", "Div"))
        weight = constant_input(conv, 1)
        if mul is None or sole_reader(graph, scaled) is not shift:
            return False
        operand = constant_operand(mul)
        if operand is None or (mul.op == "Div" and mul.inputs[0] is not operand[0]):
            return False
        s = _per_input_channel(conv, weight, operand[1])
        if s is None or not np.all(s) or rank(operand[0]) != weight.ndim:
            return False
        s = s if mul.op == "Mul" else 1.0 / s
        w = weight.astype(np.float64) * _by_weight_layout(conv, weight, s)
        set_weight_and_bias(conv, names, w, layer_bias(conv, weight.shape[0]), weight.dtype)
        moved = (c / s).reshape((-1,) + (1,) * (weight.ndim - 2)).astype(weight.dtype)
        constant_index = 1 if shift.inputs[0] is scaled else 0
        shift.inputs[constant_index] = names.constant(f"{shift.outputs[0].name}/shift", moved)
        shift.inputs[1 - constant_index] = operand[0]
        disconnect(mul)
        report.record(f"{mul.op}+{shift.op}+Conv")
        return True

    def _try_fold_add_after_gemm(self, graph: gs.Graph, layer: gs.Node, names: Namer, report: PassReport) -> bool:
        x = layer.outputs[0]
        add = sole_reader(graph, x, "Add")
        operand = constant_operand(add) if add is not None else None
        if operand is None or operand[0] is not x or rank(x) != 2 or rank(layer.inputs[0]) != 2:
            return False
        if layer.op == "MatMul" and rank(layer.inputs[1]) != 2:
            return False
        c = operand[1]
        if c.ndim > 2 or any(d != 1 and d != out for d, out in zip(c.shape[::-1], list(x.shape)[::-1])):
            return False
        rule = "MatMul+Add→Gemm" if layer.op == "MatMul" else None
        if layer.op == "Gemm":
            has_c = len(layer.inputs) > 2 and not layer.inputs[2].is_empty()
            old = constant_input(layer, 2) if has_c else np.zeros(1, dtype=c.dtype)
            if old is None or old.ndim > 2:
                return False
            c = float(layer.attrs.get("beta", 1.0)) * old.astype(np.float64) + c
            layer.attrs["beta"] = 1.0
        else:
            layer.op = "Gemm"
            layer.attrs = {}
        bias = names.constant(f"{layer.name or layer.op}/bias_folded", np.asarray(c).astype(operand[1].dtype))
        if len(layer.inputs) > 2:
            layer.inputs[2] = bias
        else:
            layer.inputs.append(bias)
        return _absorb(layer, add, report, rule)


def _per_input_channel(conv: gs.Node, weight: np.ndarray, value: np.ndarray) -> np.ndarray | None:
    return per_channel(value, weight.ndim, weight.shape[1] * int(conv.attrs.get("group", 1)))


def _by_weight_layout(conv: gs.Node, weight: np.ndarray, c: np.ndarray) -> np.ndarray:
    """A per-input-channel vector laid out like W ([Cout, Cin/group, 1...]): each output channel
    sees the input channels of its own group."""
    group = int(conv.attrs.get("group", 1))
    c_in = c.reshape(group, 1, -1).repeat(weight.shape[0] // group, axis=1).reshape(weight.shape[0], -1)
    return c_in.reshape(c_in.shape + (1,) * (weight.ndim - 2))


def _absorb(layer: gs.Node, node: gs.Node, report: PassReport, rule: str | None = None) -> bool:
    """``layer`` now computes ``node``'s output: it writes that tensor and ``node`` goes."""
    y = node.outputs[0]
    layer.outputs[0] = y
    disconnect(node)
    report.record(rule or f"{layer.op}+{node.op}", replacement=y.name, originals=[y.name])
    return True


def _conv_out_channels(conv: gs.Node) -> int | None:
    weight = conv.inputs[1]
    return output_channels(conv, tuple(weight.shape)) if weight.shape is not None and \
        all(isinstance(d, int) for d in weight.shape) else None


def _dtype(conv: gs.Node):
    bias = constant_input(conv, 2)
    weight = conv.inputs[1]
    if bias is not None:
        return bias.dtype
    return weight.values.dtype if isinstance(weight, gs.Constant) else np.dtype(weight.dtype)


def _pads_nothing(conv: gs.Node) -> bool:
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return auto_pad == "VALID" or (auto_pad == "NOTSET" and not any(conv.attrs.get("pads", [])))
