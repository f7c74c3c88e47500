"""QDQ insertion: static int8 quantization written as QuantizeLinear / DequantizeLinear pairs."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.calibration import TensorRange
from graphopt.errors import PassError
from graphopt.passes.pipeline import PassContext, PassReport
from graphopt.passes.quantize.int8_params import (
    ActivationParams,
    activation_params,
    bias_overflow_scales,
    quantize_bias,
    quantize_weight,
    weight_scales,
)
from graphopt.passes.quantize.selection import select_nodes, weight_axis

COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
# Their output holds a subset of their input's values, so it can reuse the input's scale: then
# onnxruntime drops the DQ -> op -> Q around them and the data stays int8.
SHARED_SCALE_OPS = frozenset({"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"})
# onnxruntime folds these into the Q that follows an int8 op (ReluQuantFusion, ClipQuantFusion).
FOLDED_ACTIVATIONS = frozenset({"Relu", "Clip"})
# A Concat whose inputs' range widths differ by more than this cannot share one scale: the
# narrow input would keep fewer than 255 / 8 ≈ 32 levels (yolo-head: boxes 0-640, scores 0-1).
CONCAT_RANGE_RATIO = 8.0
# Raising a channel's weight scale by more than this, to fit its bias in int32, would leave the
# weights fewer than 127 / 4 ≈ 32 levels; such a bias stays fp32 instead.
MAX_WEIGHT_SCALE_GROWTH = 4.0
# Speed rules (``speed_rules=True``), from onnxruntime 1.32 profiles on AVX-512 VNNI: below a
# reduction depth K = Cin/group·kH·kW of 128 (depthwise convs, 3-channel stems, thin 1x1 convs)
# QLinearConv gains less than its Q/DQ and NCHWc <-> NHWC layout changes cost (MobileNetV3-Small:
# 0.87x fp32 with 128, 0.93x with 64; yolo-head's 3->8->16 convs are slower in int8).
MIN_INT8_DEPTH = 128
# onnxruntime fuses these into its fp32 Conv when they are its only consumer, and has no int8 form:
# quantizing that Conv splits the fusion and adds DQ -> activation -> Q, which only a deep Conv earns
# back. (Measured: this rule for lone consumers only gives yolo-head 0.87x fp32, for any consumer 0.97x.)
FP32_FUSED_ACTIVATIONS = frozenset({"HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "Gelu", "Elu", "Softplus"})
MIN_INT8_DEPTH_BEFORE_FP32_ACTIVATION = 512
PER_CHANNEL_MIN_OPSET = 13  # DequantizeLinear's ``axis`` attribute
QDQ_MIN_OPSET = 10


class QDQInsertion:
    """Quantizes Conv, Gemm and MatMul to U8S8 QDQ with calibrated activation ranges.

    ``ranges`` maps tensor names to :class:`~graphopt.calibration.TensorRange`; call
    :meth:`calibration_tensors` first to learn which tensors need one.

    Rules:
      1. A node is quantized if :func:`selection.weight_axis` accepts it and the user did not
         exclude it or keep it fp32: its activation input gets Q -> DQ (uint8 asymmetric per
         tensor, or int8 with ``activation_type="s8"``), its weight becomes int8 symmetric with a
         per-output-channel DequantizeLinear, its bias int32 with scale ``s_x * s_w``.
      2. A Conv's output also gets Q -> DQ, so that onnxruntime fuses DQ -> Conv -> Q into one
         QLinearConv. A lone Relu/Clip after it moves the Q past it (onnxruntime folds it).
         Gemm/MatMul outputs get none: onnxruntime runs DQ -> MatMul with a float output.
      3. One Q -> DQ per tensor, shared by all its consumers. The DQ output records provenance:
         it stands for the fp32 tensor (per-layer SQNR pairs them).
      4. The output of MaxPool, Reshape, Transpose, Flatten, Squeeze, Unsqueeze whose input is
         quantized gets Q -> DQ with the *input's* scale, so the data stays int8 through them.
      5. Below opset 13 the weights are per tensor (DequantizeLinear has no ``axis`` there) and
         a note says so; the quantize API upgrades such models first.
      6. If an int32 bias would overflow, the channel's weight scale is raised until it fits;
         if that costs more than 4x (fewer than ~32 weight levels), the bias stays fp32.

    Must not:
      7. quantize a graph output: it keeps its name and fp32 values.
      8. quantize across a Concat whose inputs' ranges differ more than 8x (boxes and scores):
         its output, and what Reshape/Transpose... make of it, stay fp32, and a node reading it
         is not quantized.
      9. touch elementwise or activation ops (HardSwish, HardSigmoid, Sigmoid, Mul, Add...):
         they stay fp32 with no Q/DQ of their own, so no DQ -> op -> Q churn slows the model.
     10. run without a range for a tensor it needs (PassError), or below opset 10 (PassError).

    Speed rules (``speed_rules=True``, the default), so the int8 model is never slower on onnxruntime:
     11. a Conv whose reduction depth Cin/group·kH·kW is below 128 (depthwise, thin 1x1, 3-channel
         stem) stays fp32;
     12. a Conv whose only consumer is HardSwish, HardSigmoid, Sigmoid, Tanh, Gelu... stays fp32 unless
         its depth is at least 512: onnxruntime fuses those into its fp32 Conv only.
    """

    name = "qdq-insertion"

    def __init__(self, ranges: dict[str, TensorRange] | None = None, *, per_channel: bool = True,
                 activation_type: str = "u8", exclude=(), keep_fp32=(), speed_rules: bool = True):
        self.ranges = ranges
        self.speed_rules = speed_rules
        self.per_channel = per_channel
        self.activation_type = activation_type
        self.exclude = tuple(exclude)
        self.keep_fp32 = tuple(keep_fp32)

    def calibration_tensors(self, graph: gs.Graph) -> list[str]:
        """Names of the tensors whose ranges :meth:`run` needs."""
        names = []
        for node in self._candidates(graph, PassReport(self.name)):
            names.append(node.inputs[0].name)
            if node.op == "Conv":
                names.append(_quantized_output(node).name)
        for node in graph.nodes:
            if node.op == "Concat":
                names.extend(t.name for t in node.inputs if isinstance(t, gs.Variable))
        return list(dict.fromkeys(names))

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        if self.ranges is None:
            raise PassError("qdq-insertion: no calibration ranges", "calibrate first (graphopt.quantize does)")
        if graph.opset < QDQ_MIN_OPSET:
            raise PassError(f"qdq-insertion: opset {graph.opset} has no QuantizeLinear",
                            f"upgrade the model to opset {PER_CHANNEL_MIN_OPSET} first (--opset 13)")
        per_channel = self.per_channel
        if per_channel and graph.opset < PER_CHANNEL_MIN_OPSET:
            per_channel = False
            report.notes.append(f"opset {graph.opset} < 13: per-tensor weights (per-channel DequantizeLinear "
                                "needs opset 13; upgrade with --opset 13)")
        graph.toposort()
        outputs = {t.name for t in graph.outputs}
        mixed = self._mixed_concat_tensors(graph, report)
        nodes = []
        for node in self._candidates(graph, report):
            if node.inputs[0].name in mixed:
                report.record("kept fp32: input mixes ranges")
                report.notes.append(f"{node.name or node.op}: kept fp32, its input {node.inputs[0].name} "
                                    "concatenates tensors of very different ranges")
            else:
                nodes.append(node)
        own = self._own_scale_tensors(nodes, outputs)
        shared = _shared_scale_tensors(graph, set(own), outputs)
        params = {name: self._params(name) for name in own if name not in shared}
        for name, root in shared.items():
            params[name] = params[root]
        for node in nodes:
            self._quantize_weight_and_bias(graph, node, params[node.inputs[0].name], per_channel, report)
        tensors = graph.tensors()
        constants: dict[ActivationParams, tuple[gs.Constant, gs.Constant]] = {}
        for name, p in params.items():
            _insert_qdq(graph, tensors[name], p, constants, report)
        return report

    def _candidates(self, graph: gs.Graph, report: PassReport) -> list[gs.Node]:
        nodes = select_nodes(graph, COMPUTE_OPS, self.exclude, self.keep_fp32)
        if not self.speed_rules:
            return nodes
        faster = [node for node in nodes if _int8_pays(node)]
        for node in nodes:
            if node not in faster:
                report.record("kept fp32: int8 not faster")
        return faster

    def _params(self, name: str) -> ActivationParams:
        found = self.ranges.get(name)
        if found is None:
            raise PassError(f"qdq-insertion: no calibration range for tensor '{name}'",
                            "calibrate with the tensors that calibration_tensors() names")
        if not (np.isfinite(found.low) and np.isfinite(found.high)):
            raise PassError(f"qdq-insertion: tensor '{name}' has a non-finite range [{found.low}, {found.high}]",
                            "the calibration data drives the model to inf/nan; check it")
        return activation_params(found.low, found.high, self.activation_type)

    def _own_scale_tensors(self, nodes: list[gs.Node], outputs: set[str]) -> dict[str, gs.Tensor]:
        own = {}
        for node in nodes:
            own[node.inputs[0].name] = node.inputs[0]
            if node.op == "Conv":
                out = _quantized_output(node)
                if out.name not in outputs:
                    own[out.name] = out
        return own

    def _mixed_concat_tensors(self, graph: gs.Graph, report: PassReport) -> set[str]:
        mixed: set[str] = set()
        for node in graph.nodes:
            if node.op == "Concat":
                widths = [w for w in (self._width(t) for t in node.inputs) if w is not None]
                if len(widths) > 1 and max(widths) > CONCAT_RANGE_RATIO * max(min(widths), 1e-12):
                    mixed.add(node.outputs[0].name)
                    report.record("Concat kept fp32")
                    report.notes.append(f"Concat {node.name}: kept fp32, input ranges differ "
                                        f"{max(widths) / max(min(widths), 1e-12):.0f}x")
            elif node.op in SHARED_SCALE_OPS and node.inputs and node.inputs[0].name in mixed:
                mixed.add(node.outputs[0].name)
        return mixed

    def _width(self, tensor: gs.Tensor) -> float | None:
        if isinstance(tensor, gs.Constant):
            values = tensor.values
            if values.dtype.kind != "f" or values.size == 0:
                return None
            return float(max(values.max(), 0) - min(values.min(), 0))
        found = self.ranges.get(tensor.name)
        return None if found is None else max(found.high, 0) - min(found.low, 0)

    def _quantize_weight_and_bias(self, graph: gs.Graph, node: gs.Node, x: ActivationParams,
                                  per_channel: bool, report: PassReport) -> None:
        weight = node.inputs[1]
        axis = weight_axis(node) if per_channel else None
        scales = weight_scales(weight.values, axis)
        bias = _bias(node, weight.values.shape[weight_axis(node)])
        keep_bias = False
        if bias is not None:
            raised = bias_overflow_scales(bias.values, x.scale, scales)
            growth = float(np.max(raised / scales))
            if growth > MAX_WEIGHT_SCALE_GROWTH:
                keep_bias = True
                report.record("bias overflow: bias kept fp32")
                report.notes.append(f"{node.name or node.op}: int32 bias would overflow "
                                    f"(weight scale x{growth:.3g} needed); bias kept fp32")
            elif growth > 1:
                scales = raised
                report.record("bias overflow: weight scale raised")
                report.notes.append(f"{node.name or node.op}: weight scale raised x{growth:.3g} to fit the int32 bias")
        q = quantize_weight(weight.values, scales, axis)
        node.inputs[1] = _dequantized_constant(graph, weight.name, q, scales, axis)
        report.record(f"{node.op} weight int8" + (" per channel" if axis is not None else " per tensor"))
        if bias is not None and not keep_bias:
            qb, bias_scales = quantize_bias(bias.values, x.scale, scales)
            node.inputs[2] = _dequantized_constant(graph, bias.name, qb, bias_scales, 0 if axis is not None else None)


def _int8_pays(node: gs.Node) -> bool:
    """Speed rules 11-12: is onnxruntime's int8 Conv worth its Q/DQ here?"""
    if node.op != "Conv":
        return True
    shape = node.inputs[1].values.shape
    depth = int(np.prod(shape[1:]))
    if depth < MIN_INT8_DEPTH:
        return False
    consumers = node.outputs[0].outputs
    # Only a lone consumer fuses: SiLU's x·Sigmoid(x) or x·HardSigmoid(x) also reads x itself.
    fuses_in_fp32 = len(consumers) == 1 and consumers[0].op in FP32_FUSED_ACTIVATIONS
    return not fuses_in_fp32 or depth >= MIN_INT8_DEPTH_BEFORE_FP32_ACTIVATION


def _quantized_output(node: gs.Node) -> gs.Tensor:
    """The tensor after ``node`` whose Q onnxruntime fuses: past a lone Relu/Clip."""
    out = node.outputs[0]
    if len(out.outputs) == 1 and out.outputs[0].op in FOLDED_ACTIVATIONS:
        return out.outputs[0].outputs[0]
    return out


def _bias(node: gs.Node, channels: int) -> gs.Constant | None:
    if len(node.inputs) < 3 or not isinstance(node.inputs[2], gs.Constant):
        return None
    bias = node.inputs[2]
    if bias.values.dtype != np.float32 or bias.values.shape != (channels,):
        return None
    return bias


def _shared_scale_tensors(graph: gs.Graph, quantized: set[str], outputs: set[str]) -> dict[str, str]:
    """Outputs of shape ops fed by quantized tensors -> the tensor whose scale they reuse."""
    roots = {name: name for name in quantized}
    shared = {}
    for node in graph.nodes:
        if node.op not in SHARED_SCALE_OPS or len(node.outputs) != 1 or not node.inputs:
            continue
        source, out = node.inputs[0].name, node.outputs[0]
        if source in roots and out.name not in outputs:
            roots[out.name] = shared[out.name] = roots[source]
    return shared


def _insert_qdq(graph: gs.Graph, tensor: gs.Tensor, params: ActivationParams,
                constants: dict, report: PassReport) -> None:
    if params not in constants:
        stem = f"{tensor.name}_{len(constants)}"
        constants[params] = (gs.Constant(f"{stem}_scale", np.array(params.scale, np.float32)),
                             gs.Constant(f"{stem}_zero_point", np.array(params.zero_point, params.dtype)))
    scale, zero_point = constants[params]
    quantized = gs.Variable(f"{tensor.name}_quantized", dtype=params.dtype, shape=tensor.shape)
    dequantized = gs.Variable(f"{tensor.name}_dequantized", dtype=np.float32, shape=tensor.shape)
    for consumer in list(tensor.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is tensor:
                consumer.inputs[i] = dequantized
    graph.nodes.append(gs.Node("QuantizeLinear", f"{tensor.name}_QuantizeLinear",
                               inputs=[tensor, scale, zero_point], outputs=[quantized]))
    graph.nodes.append(gs.Node("DequantizeLinear", f"{tensor.name}_DequantizeLinear",
                               inputs=[quantized, scale, zero_point], outputs=[dequantized]))
    report.record("activation Q/DQ", dequantized.name, [tensor.name])


def _dequantized_constant(graph: gs.Graph, name: str, values: np.ndarray, scales: np.ndarray,
                          axis: int | None) -> gs.Variable:
    """DequantizeLinear(values, scales, zeros) as a new tensor named after ``name``."""
    suffix = f"_{len(graph.nodes)}"  # a weight shared by several nodes gets one copy per node
    stored = gs.Constant(f"{name}_{values.dtype}{suffix}", values)
    scale = gs.Constant(f"{name}_scale{suffix}", np.asarray(scales, np.float32))
    zero_point = gs.Constant(f"{name}_zero_point{suffix}", np.zeros(np.shape(scales), values.dtype))
    out = gs.Variable(f"{name}_dequantized{suffix}", dtype=np.float32, shape=list(values.shape))
    attrs = {"axis": axis} if axis is not None and np.ndim(scales) == 1 else {}
    graph.nodes.append(gs.Node("DequantizeLinear", f"{name}_DequantizeLinear{suffix}",
                               attrs=attrs, inputs=[stored, scale, zero_point], outputs=[out]))
    return out
