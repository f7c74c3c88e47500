"""Dynamic quantization: MatMul/Gemm weights int8 ahead of time, activations quantized at run time."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.errors import PassError
from graphopt.passes.pipeline import PassContext, PassReport
from graphopt.passes.quantize.int8_params import quantize_weight, weight_scales
from graphopt.passes.quantize.selection import select_nodes, weight_axis

DYNAMIC_OPS = ("MatMul", "Gemm")
MIN_OPSET = 11  # DynamicQuantizeLinear


class DynamicQuantization:
    """Rewrites ``y = x @ W (+ C)`` as onnxruntime's dynamic int8 pattern, which it fuses into one
    ``DynamicQuantizeMatMul`` kernel::

        DynamicQuantizeLinear(x) -> x_q, s_x, z_x
        y = Cast<float>(MatMulInteger(x_q, W_q, z_x, 0)) * (s_x * s_w)  (+ C)

    Rules:
      1. MatMul with a constant 2-D float weight, and Gemm with alpha = beta = 1 and no transA
         (a transB weight is stored transposed), unless excluded or kept fp32 by the user.
      2. Weights int8 symmetric per output column (``s_w`` of shape [N]), or per tensor.
      3. One DynamicQuantizeLinear per activation tensor, shared by all the MatMuls reading it
         (a transformer's Q, K and V projections).
      4. The result tensor keeps its consumers; it is renamed ``<name>_dequantized`` and records
         provenance (it stands for the fp32 ``<name>``), except a graph output, which keeps its name.

    Must not:
      5. touch Conv: onnxruntime's ConvInteger is 4-15x slower than its fp32 Conv.
      6. touch a MatMul of two activations (attention scores): there is no weight to prepare.
      7. run with ``activation_type="s8"`` (DynamicQuantizeLinear is uint8) or below opset 11 (PassError).
    """

    name = "dynamic-quantization"

    def __init__(self, *, per_channel: bool = True, activation_type: str = "u8", exclude=(), keep_fp32=()):
        if activation_type != "u8":
            raise PassError("dynamic quantization: activations are uint8 (DynamicQuantizeLinear)",
                            "drop --activation-type s8, or use --quantize int8")
        self.per_channel = per_channel
        self.exclude = tuple(exclude)
        self.keep_fp32 = tuple(keep_fp32)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        if graph.opset < MIN_OPSET:
            raise PassError(f"dynamic quantization: opset {graph.opset} has no DynamicQuantizeLinear",
                            "upgrade the model with --opset 13")
        outputs = {t.name for t in graph.outputs}
        quantized_inputs: dict[str, tuple[gs.Variable, gs.Variable, gs.Variable]] = {}
        for node in select_nodes(graph, DYNAMIC_OPS, self.exclude, self.keep_fp32):
            if node.op == "Gemm" and node.attrs.get("transA", 0):
                continue
            self._rewrite(graph, node, quantized_inputs, outputs, report)
        return report

    def _rewrite(self, graph: gs.Graph, node: gs.Node, quantized_inputs: dict, outputs: set[str],
                 report: PassReport) -> None:
        x, weight, y = node.inputs[0], node.inputs[1], node.outputs[0]
        values = weight.values.T if weight_axis(node) == 0 else weight.values  # [K, N]
        axis = 1 if self.per_channel else None
        scales = weight_scales(values, axis)
        stem = node.name or y.name
        if x.name not in quantized_inputs:
            quantized_inputs[x.name] = _dynamic_quantize(graph, x)
        x_q, x_scale, x_zero = quantized_inputs[x.name]
        w_q = gs.Constant(f"{weight.name}_int8_{stem}", quantize_weight(values, scales, axis))
        w_zero = gs.Constant(f"{weight.name}_zero_point_{stem}", np.zeros(scales.shape, np.int8))
        w_scale = gs.Constant(f"{weight.name}_scale_{stem}", scales)
        accumulated = gs.Variable(f"{stem}_int32", dtype=np.int32)
        as_float = gs.Variable(f"{stem}_int32_float", dtype=np.float32)
        scale = gs.Variable(f"{stem}_scale", dtype=np.float32)
        bias = node.inputs[2] if node.op == "Gemm" and len(node.inputs) > 2 else None
        scaled = gs.Variable(f"{stem}_scaled", dtype=np.float32) if bias is not None else y
        node.outputs.clear()
        node.inputs.clear()
        graph.nodes.extend([
            gs.Node("MatMulInteger", f"{stem}_MatMulInteger", inputs=[x_q, w_q, x_zero, w_zero], outputs=[accumulated]),
            gs.Node("Cast", f"{stem}_Cast", attrs={"to": onnx.TensorProto.FLOAT}, inputs=[accumulated],
                    outputs=[as_float]),
            gs.Node("Mul", f"{stem}_scale_Mul", inputs=[x_scale, w_scale], outputs=[scale]),
            gs.Node("Mul", f"{stem}_Mul", inputs=[as_float, scale], outputs=[scaled]),
        ])
        if bias is not None:
            graph.nodes.append(gs.Node("Add", f"{stem}_bias_Add", inputs=[scaled, bias], outputs=[y]))
        original = y.name
        if original not in outputs:
            y.name = f"{original}_dequantized"
        report.record(f"{node.op} dynamic int8", y.name, [original])


def _dynamic_quantize(graph: gs.Graph, x: gs.Tensor) -> tuple[gs.Variable, gs.Variable, gs.Variable]:
    outs = (gs.Variable(f"{x.name}_quantized", dtype=np.uint8),
            gs.Variable(f"{x.name}_scale", dtype=np.float32, shape=[]),
            gs.Variable(f"{x.name}_zero_point", dtype=np.uint8, shape=[]))
    graph.nodes.append(gs.Node("DynamicQuantizeLinear", f"{x.name}_DynamicQuantizeLinear",
                               inputs=[x], outputs=list(outs)))
    return outs
