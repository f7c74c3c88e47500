"""QDQ → int8 lowering: ``DQ → Conv/MatMul/Gemm → [Relu|Clip] → Q`` becomes one kernel call,
and the other QDQ groups that onnxruntime runs in integers run in integers here too, with its
arithmetic, so that a QDQ model gives onnxruntime's outputs bit for bit.

Rules:

1. The activation comes from a DequantizeLinear of a runtime tensor with a constant scalar scale
   and a constant uint8 or int8 zero point; the weight from a DequantizeLinear of a constant int8
   tensor with zero points 0 and a per-tensor or per-output-channel scale.
2. A bias (Conv input 2, Gemm C) must be a DequantizeLinear of a constant int32 vector: its int32
   values go to the kernel's epilogue unchanged, as onnxruntime's QLinearConv uses them.
   A non-default Gemm alpha/beta/transA, or a Conv that is not 2-D: no lowering.
   Weights that are uint8 with any zero point (quantize_static's output for Constant-node weights,
   which it quantizes as activations) or a float32 constant bias take
   :func:`_lower_offset_weights` instead (:class:`int8.OffsetWeightConv` /
   :class:`int8.OffsetWeightProduct`): int8 weights ``w - zw`` or ``w - 128`` per channel, the
   difference corrected with the receptive-field sums of ``x - zx`` (one more output channel of
   ones), the float bias rounded to int32 as onnxruntime's WeightBiasQuantization does before
   it fuses the group; exact integers and onnxruntime's requantization, as for int8 weights.
   Groups other than 1 or depthwise, or K * 255 * 255 >= 2**31: no lowering.
3. If the product's only consumer is a Relu or a Clip with constant bounds, whose only consumer
   is a QuantizeLinear to uint8 with constant scalar scale and zero point (or the product feeds
   that QuantizeLinear directly), the group becomes one call writing the uint8 result; the
   activation becomes the epilogue's quantized clamp (exact: quantization is monotonic).
4. Otherwise the product alone becomes a call with float32 output (``float32(acc) * s_x * s_w``)
   and the Relu/Clip/Q stay as they are.
5. A MatMul of two dequantized activations (attention) becomes exact integer sums requantized
   like onnxruntime's QLinearMatMul.
6. ``DQ(a) + DQ(b) → Q`` and ``DQ(a) * DQ(b) → Q``, all uint8 per tensor (a or b may be
   constant), use onnxruntime's QLinearAdd / QLinearMul arithmetic. When one operand is a constant
   scalar, that arithmetic, run once on the other's 256 levels, becomes a lookup table.
7. ``DQ → op → Q`` with the same scale and zero point on both sides, for an op that only moves
   or selects values (MaxPool, Reshape, Transpose, ...; UINT8_TRANSPARENT): the op runs on the
   uint8 tensor itself (exact: quantization is monotonic and DQ→Q round-trips).
8. ``DQ → op → Q`` for an elementwise function of one value (Sigmoid, HardSwish, Gelu, ...;
   LOOKUP_TABLE_OPS), per-tensor uint8: a 256-entry table made at session creation by running the
   op on the 256 dequantized levels, the same float computation the nodes do one value at a time.
9. Never lower when an intermediate tensor of the group is a graph output or has other consumers.
10. ``DQ → Add/Sub/Mul/Div by a float32 constant scalar → Q`` is a lookup table too (rule 8).
11. After lowering, steps that each map one uint8 value compose (:func:`_compose_tables`): a
    lookup of a lookup is one table, and an Int8Add/Int8Mul of two functions of one tensor
    (HardSwish as ``x * clip(x + 3, 0, 6) / 6``) is a table on that tensor. Then a tensor read
    only by the next step lets the two run as one pass (:func:`_fuse_quantize_edges`): lookup →
    DQ (a float32 table), Q → lookup, Q → DQ; and ``DQ → LayerNormalization|Softmax → Q``
    runs on uint8 rows (:func:`_fuse_layer_norms`). Each computes the values the separate steps compute.
12. ``DQ → AveragePool → Q`` (2-D, uint8 per tensor) is onnxruntime's QLinearAveragePool
    (:class:`int8.QLinearAveragePool`): float sums of the dequantized taps, the zero point added
    before rounding; not the float steps' values.
13. ``DQ → Softmax → Q`` before opset 13 is onnxruntime's QLinearSoftmax (:class:`int8.QLinearSoftmax`,
    its exp table), fused before the Q → DQ edges of rule 11. From opset 13 on, rule 11's
    Softmax step keeps the float steps' values (within one step of onnxruntime's).

The DequantizeLinear nodes stay in the graph; those left without consumers are dropped later.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from graphopt.runtime import int8
from graphopt.runtime.ops import OPS, NodeSpec
from graphopt.runtime.ops.nn import Window


UINT8_TRANSPARENT = {"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice",
                     "Resize", "Identity"}
LOOKUP_TABLE_OPS = {"Sigmoid", "Tanh", "Relu", "LeakyRelu", "HardSigmoid", "HardSwish", "Gelu", "Erf",
                    "Exp", "Log", "Sqrt", "Neg", "Abs", "Reciprocal", "Clip"}
# binary float ops that, with a float32 constant scalar second operand, are a function of the first
SCALAR_OPERAND_OPS = {"Add", "Sub", "Mul", "Div"}


@dataclasses.dataclass
class LoweredGroup:
    """One step standing for the ``replaced`` nodes: ``kernel`` is the int8 call, or None when
    ``spec`` is an ordinary op rewired to read and write the quantized tensors."""
    spec: NodeSpec
    kernel: object
    replaced: list[NodeSpec]


class _Graph:
    def __init__(self, specs: list[NodeSpec], consts: dict[str, np.ndarray], graph_outputs: set[str]):
        self.consts, self.graph_outputs = consts, graph_outputs
        self.producer = {o: s for s in specs for o in s.outputs if o}
        self.consumers: dict[str, list[NodeSpec]] = {}
        for s in specs:
            for i in s.inputs:
                if i:
                    self.consumers.setdefault(i, []).append(s)

    def sole_consumer(self, tensor: str) -> NodeSpec | None:
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or tensor in self.graph_outputs:
            return None
        return users[0]

    def dequantized(self, tensor: str) -> NodeSpec | None:
        node = self.producer.get(tensor)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def const(self, tensor: str) -> np.ndarray | None:
        return self.consts.get(tensor) if tensor else None


def _activation(g: _Graph, dq: NodeSpec | None, constant_ok: bool = False):
    """(x tensor, scale, zero point) of an activation DequantizeLinear, or None."""
    if dq is None or (dq.inputs[0] in g.consts and not constant_ok) or len(dq.inputs) < 3:
        return None
    scale, zp = g.const(dq.inputs[1]), g.const(dq.inputs[2])
    if scale is None or zp is None or scale.size != 1 or zp.size != 1 or zp.dtype not in (np.uint8, np.int8):
        return None
    return dq.inputs[0], np.float32(scale.reshape(-1)[0]), int(zp.reshape(-1)[0])


def _weights(g: _Graph, dq: NodeSpec | None, channel_axis: int):
    """(int8 weights, float32 scale per output channel) of a weight DequantizeLinear, or None."""
    if dq is None:
        return None
    w, scale = g.const(dq.inputs[0]), g.const(dq.inputs[1])
    zp = g.const(dq.inputs[2]) if dq.has_input(2) else None
    if w is None or scale is None or w.dtype != np.int8 or (dq.has_input(2) and zp is None):
        return None
    if zp is not None and np.any(zp):
        return None
    if scale.size > 1 and (dq.attr("axis", 1) % w.ndim != channel_axis or scale.size != w.shape[channel_axis]):
        return None
    return w, np.broadcast_to(scale.astype(np.float32).reshape(-1), (w.shape[channel_axis],)).copy()


def _bias(g: _Graph, node: NodeSpec, index: int):
    """int32 bias values, None when absent, False when present but not lowerable."""
    if not node.has_input(index):
        return None
    dq = g.dequantized(node.inputs[index])
    values = g.const(dq.inputs[0]) if dq is not None else None
    if values is None or values.dtype != np.int32 or values.ndim != 1:
        return False
    return values


def _quantize_params(g: _Graph, node: NodeSpec | None):
    """(scale, zero point) of a per-tensor QuantizeLinear to uint8 with constant parameters, or None."""
    if node is None or node.op_type != "QuantizeLinear" or len(node.inputs) < 3 or node.attr("output_dtype", 0):
        return None
    scale, zp = g.const(node.inputs[1]), g.const(node.inputs[2])
    if scale is None or zp is None or scale.size != 1 or zp.dtype != np.uint8:
        return None
    return np.float32(scale.reshape(-1)[0]), int(zp.reshape(-1)[0])


def _epilogue_tail(g: _Graph, node: NodeSpec):
    """(output tensor, quantize settings or None, relu, clip, replaced nodes) after the product."""
    out = node.outputs[0]
    follower = g.sole_consumer(out)
    relu, clip, activation = False, None, None
    if follower is not None and follower.op_type in ("Relu", "Clip"):
        if follower.op_type == "Relu":
            relu = True
        else:
            lo = g.const(follower.inputs[1]) if follower.has_input(1) else None
            hi = g.const(follower.inputs[2]) if follower.has_input(2) else None
            if (follower.has_input(1) and lo is None) or (follower.has_input(2) and hi is None) or follower.opset < 11:
                return out, None, False, None, []
            clip = (-np.inf if lo is None else float(lo), np.inf if hi is None else float(hi))
        activation = follower
        follower = g.sole_consumer(follower.outputs[0])
    quantize = _quantize_params(g, follower)
    if quantize is None:
        return out, None, False, None, []
    replaced = ([activation] if activation else []) + [follower]
    return follower.outputs[0], quantize, relu, clip, replaced


def _conv_kernel(x, weights, bias, window, epilogue, threads):
    return int8.PreparedConv(x[2], weights, window, threads, bias=bias, **epilogue)


def _zero_point_type(g: _Graph, tensor: str) -> np.dtype:
    return g.const(g.dequantized(tensor).inputs[2]).dtype


_BINARY_KERNELS = {"Add": int8.QLinearAdd, "Mul": int8.QLinearMul}


def _lower_binary(g: _Graph, node: NodeSpec) -> LoweredGroup | None:
    """DQ(a) + DQ(b) → Q (or ×), all uint8 per tensor: onnxruntime runs it as QLinearAdd /
    QLinearMul, whose float32 rounding differs from the float op; reproducing it keeps residual
    connections and gates bit-exact."""
    a = _activation(g, g.dequantized(node.inputs[0]), constant_ok=True)
    b = _activation(g, g.dequantized(node.inputs[1]), constant_ok=True)
    if a is None or b is None or not all(_zero_point_type(g, i) == np.uint8 for i in node.inputs[:2]):
        return None
    out, quantize, relu, clip, _ = _epilogue_tail(g, node)
    if quantize is None or relu or clip is not None:
        return None
    tail = [g.sole_consumer(node.outputs[0])]

    int8_binary = _BINARY_KERNELS[node.op_type](a[1], a[2], b[1], b[2], quantize[0], quantize[1])
    scalar = _scalar_operand_table(g, node, a, b, int8_binary)
    if scalar is not None:
        return scalar
    spec = NodeSpec(name=node.name, op_type=f"Int8{node.op_type}", inputs=[a[0], b[0]], outputs=[out], attrs={},
                    consts=[g.const(a[0]), g.const(b[0])], opset=node.opset, threads=node.threads)
    return LoweredGroup(spec, int8_binary, [node] + tail)


def _scalar_operand_table(g: _Graph, node: NodeSpec, a, b, int8_binary) -> LoweredGroup | None:
    """With one operand a constant scalar (``x * 1/6``, ``x + 3``), the group is a function of the
    other's uint8 value: its 256 results, computed once by the same kernel, make a lookup table."""
    values = [g.const(a[0]), g.const(b[0])]
    constant = [v is not None and v.size == 1 and v.ndim <= 1 for v in values]
    if constant[0] == constant[1]:
        return None
    levels = np.arange(256, dtype=np.uint8)
    table = (int8_binary(values[0], levels) if constant[0] else int8_binary(levels, values[1])).reshape(-1)
    x = b if constant[0] else a
    out = g.sole_consumer(node.outputs[0])
    # a rank-0 operand takes the constant's shape (1,) when it has one
    lookup = int8.TableLookup(table, min_rank=values[0 if constant[0] else 1].ndim)
    spec = NodeSpec(name=node.name, op_type=f"Int8{node.op_type}", inputs=[x[0]], outputs=[out.outputs[0]],
                    attrs={}, consts=[g.const(x[0])], opset=node.opset, threads=node.threads)
    return LoweredGroup(spec, lookup, [node, out])


def _lower_between_qdq(g: _Graph, node: NodeSpec) -> LoweredGroup | None:
    """``DQ → op → Q`` for an op that moves values (rule 7) or maps each value alone (rule 8)."""
    scalar_operand = node.op_type in SCALAR_OPERAND_OPS
    if node.op_type not in UINT8_TRANSPARENT and node.op_type not in LOOKUP_TABLE_OPS and not scalar_operand:
        return None
    if scalar_operand:
        # DQ(x) op c → Q with c a float32 constant scalar (not quantized): a function of x alone
        c = g.const(node.inputs[1]) if len(node.inputs) == 2 else None
        if c is None or c.size != 1 or c.dtype != np.float32 or c.ndim > 1:
            return None
    x = _activation(g, g.dequantized(node.inputs[0]))
    if x is None or _zero_point_type(g, node.inputs[0]) != np.uint8 or node.num_outputs() != 1:
        return None
    q = g.sole_consumer(node.outputs[0])
    quantize = _quantize_params(g, q)
    if quantize is None:
        return None
    if node.op_type in UINT8_TRANSPARENT:
        if quantize != (x[1], x[2]) or (node.op_type == "Resize" and node.attr("mode", "nearest") != "nearest"):
            return None
        spec = dataclasses.replace(node, inputs=[x[0]] + node.inputs[1:], outputs=[q.outputs[0]],
                                   consts=[g.const(x[0])] + node.consts[1:])
        return LoweredGroup(spec, None, [node, q])
    others = [g.const(i) if i else None for i in node.inputs[1:]]
    if any(i and v is None for i, v in zip(node.inputs[1:], others)):
        return None
    table = _lookup_table(node, x, others, quantize)
    spec = NodeSpec(name=node.name, op_type=f"Int8{node.op_type}", inputs=[x[0]], outputs=[q.outputs[0]],
                    attrs={}, consts=[g.const(x[0])], opset=node.opset, threads=node.threads)
    min_rank = max([v.ndim for v in others if v is not None] + [0]) if scalar_operand else 0
    return LoweredGroup(spec, int8.TableLookup(table, min_rank), [node, q])


def _lookup_table(node: NodeSpec, x, others, quantize) -> np.ndarray:
    """The op's value for each of the 256 inputs: dequantized, computed in float, quantized, as
    the DQ → op → Q nodes compute them one by one."""
    kernel = OPS[node.op_type].build(node)
    levels = (np.arange(256, dtype=np.int32) - x[2]).astype(np.float32) * x[1]
    values = np.asarray(kernel(levels, *others), np.float32)
    return np.clip(np.rint(values / quantize[0]) + quantize[1], 0, 255).astype(np.uint8)


def _try_lower(g: _Graph, node: NodeSpec) -> LoweredGroup | None:
    if node.op_type in _BINARY_KERNELS:
        group = _lower_binary(g, node)
        return group if group is not None else _lower_between_qdq(g, node)
    if node.op_type in UINT8_TRANSPARENT or node.op_type in LOOKUP_TABLE_OPS or node.op_type in SCALAR_OPERAND_OPS:
        return _lower_between_qdq(g, node)
    if node.op_type == "AveragePool":
        return _lower_average_pool(g, node)
    if node.op_type == "Conv":
        channel_axis, bias_index = 0, 2
    elif node.op_type == "Gemm":
        if node.attr("transA", 0) or node.attr("alpha", 1.0) != 1.0 or node.attr("beta", 1.0) != 1.0:
            return None
        channel_axis, bias_index = (0 if node.attr("transB", 0) else 1), 2
    elif node.op_type == "MatMul":
        channel_axis, bias_index = 1, None
    else:
        return None
    x = _activation(g, g.dequantized(node.inputs[0]))
    if x is not None and node.op_type == "MatMul":
        y = _activation(g, g.dequantized(node.inputs[1]))
        if y is not None:
            return _lower_activation_matmul(g, node, x, y)
    w = _weights(g, g.dequantized(node.inputs[1]), channel_axis)
    if x is None:
        return None
    bias = _bias(g, node, bias_index) if bias_index is not None else None
    if w is None or bias is False:
        return _lower_offset_weights(g, node, x, channel_axis, bias_index)
    w_int8, w_scale = w
    if node.op_type == "Conv":
        if w_int8.ndim != 4:
            return None
        group = node.attr("group", 1)
        weights = int8.ConvWeights(w_int8, group)
    elif w_int8.ndim != 2:
        return None
    out, quantize, relu, clip, tail = _epilogue_tail(g, node)
    scale = x[1] * w_scale
    if quantize is not None:
        epilogue = dict(scale=scale, output="uint8", out_scale=quantize[0], out_zero_point=quantize[1],
                        relu=relu, clip=clip)
    else:
        epilogue = dict(scale=scale, output="float32")
    if node.op_type == "Conv":
        kernel = _conv_kernel(x, weights, bias, Window(node, node.attr("kernel_shape")), epilogue,
                              node.threads)
    else:
        kernel = int8.PreparedProduct(w_int8.T if channel_axis == 0 else w_int8, x[2],
                                      _zero_point_type(g, node.inputs[0]), node.threads, bias=bias, **epilogue)
    replaced = [node] + tail
    spec = NodeSpec(name=node.name, op_type=f"Int8{node.op_type}", inputs=[x[0]], outputs=[out], attrs={},
                    consts=[None], opset=node.opset, threads=node.threads)
    return LoweredGroup(spec, kernel, replaced)


def _offset_weights(g: _Graph, dq: NodeSpec | None, channel_axis: int):
    """(int8 weights, int32 offset per output channel, float32 scale per output channel) of a
    weight DequantizeLinear whose weights are uint8 (any zero points, per tensor or per output
    channel: :func:`int8.offset_weights`) or int8 with zero points 0 (offset 0), or None."""
    if dq is None or len(dq.inputs) < 2:
        return None
    w, scale = g.const(dq.inputs[0]), g.const(dq.inputs[1])
    zp = g.const(dq.inputs[2]) if dq.has_input(2) else None
    if w is None or scale is None or (dq.has_input(2) and zp is None) or w.ndim < 2 \
            or dq.attr("block_size", 0) or scale.dtype != np.float32:
        return None
    channels = w.shape[channel_axis]
    for params in (scale, zp):
        if params is not None and params.size > 1 and (
                dq.attr("axis", 1) % w.ndim != channel_axis or params.size != channels or params.ndim != 1):
            return None
    if w.dtype == np.uint8:
        if zp is not None and zp.dtype != np.uint8:
            return None
        w_int8, offset = int8.offset_weights(w, 0 if zp is None else zp, channel_axis)
    elif w.dtype == np.int8 and (zp is None or not np.any(zp)):
        w_int8, offset = w, np.zeros(1, np.int32)
    else:
        return None
    return (w_int8, np.broadcast_to(offset, (channels,)).copy(),
            np.broadcast_to(scale.reshape(-1), (channels,)).copy())


def _int32_bias(g: _Graph, node: NodeSpec, index: int | None, channels: int, bias_scale: np.ndarray):
    """int32 bias values, None when absent, False when not usable: a DequantizeLinear of constant
    int32 values (used unchanged, rule 2), or a float32 constant quantized as onnxruntime's
    WeightBiasQuantization does before it fuses the group: ``int32(round_half_even(b /
    float32(s_x * s_w)))``."""
    if index is None or not node.has_input(index):
        return None
    values = g.const(node.inputs[index])
    if values is None:
        dq = g.dequantized(node.inputs[index])
        values = g.const(dq.inputs[0]) if dq is not None else None
        if values is None or values.dtype != np.int32 or values.ndim != 1 or values.size != channels:
            return False
        return values
    if values.dtype != np.float32 or values.ndim != 1 or values.size != channels:
        return False
    with np.errstate(all="ignore"):
        quotient = np.rint(values / bias_scale.astype(np.float32))
    if not np.all(np.isfinite(quotient)) or np.any(np.abs(quotient) >= 2.0 ** 31):
        return False
    return quotient.astype(np.int32)


def _lower_offset_weights(g: _Graph, node: NodeSpec, x, channel_axis: int, bias_index: int | None):
    """Rules 1-4 for weights the int8 kernels do not take as they are (uint8 with a zero point:
    :class:`int8.OffsetWeightConv`) and for a float32 bias, which onnxruntime quantizes to int32
    (:func:`_int32_bias`) before running the group as QLinearConv / QLinearMatMul: the kernel's
    int32 sums, corrected, plus the bias, requantized as onnxruntime does."""
    w = _offset_weights(g, g.dequantized(node.inputs[1]), channel_axis)
    if w is None:
        return None
    w_int8, offset, w_scale = w
    channels = w_int8.shape[channel_axis]
    scale = (x[1] * w_scale).astype(np.float32)
    bias = _int32_bias(g, node, bias_index, channels, scale)
    depth = w_int8.size // channels
    if bias is False or depth > int8.MAX_OFFSET_WEIGHT_K:
        return None
    if bias is not None and np.max(np.abs(bias.astype(np.int64))) + depth * 255 * 255 >= 2 ** 31:
        return None
    out, quantize, relu, clip, tail = _epilogue_tail(g, node)
    clamp = (0, 255)
    if quantize is not None:
        low = max(-np.inf if clip is None else clip[0], 0.0 if relu else -np.inf)
        clamp = (int8.bound(low, quantize), int8.bound(np.inf if clip is None else clip[1], quantize))
    epilogue = dict(scale=scale, bias=bias, quantize=quantize, clamp=clamp)
    if node.op_type == "Conv":
        group = node.attr("group", 1)
        if w_int8.ndim != 4 or (group != 1 and not (w_int8.shape[1] == 1 and group == channels)):
            return None
        kernel = int8.OffsetWeightConv(x[2], w_int8, offset, group, Window(node, node.attr("kernel_shape")),
                                       node.threads, **epilogue)
    else:
        if w_int8.ndim != 2:
            return None
        kernel = int8.OffsetWeightProduct(np.ascontiguousarray(w_int8.T if channel_axis == 0 else w_int8), offset,
                                          x[2], _zero_point_type(g, node.inputs[0]), node.threads, **epilogue)
    spec = NodeSpec(name=node.name, op_type=f"Int8{node.op_type}", inputs=[x[0]], outputs=[out], attrs={},
                    consts=[None], opset=node.opset, threads=node.threads)
    return LoweredGroup(spec, kernel, [node] + tail)


def _lower_average_pool(g: _Graph, node: NodeSpec) -> LoweredGroup | None:
    """``DQ → AveragePool → Q``, 2-D, uint8 per tensor (rule 12): onnxruntime fuses it into
    QLinearAveragePool, whose float arithmetic (:class:`int8.QLinearAveragePool`) rounds
    differently from the three separate steps."""
    kernel = node.attr("kernel_shape")
    if kernel is None or len(kernel) != 2 or node.num_outputs() != 1 or node.attr("ceil_mode", 0) \
            or any(d != 1 for d in node.attr("dilations", [1, 1])) \
            or node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    dq = g.dequantized(node.inputs[0])
    x = _activation(g, dq)
    if x is None or _zero_point_type(g, node.inputs[0]) != np.uint8 or g.const(dq.inputs[1]).dtype != np.float32:
        return None
    q = g.sole_consumer(node.outputs[0])
    quantize = _quantize_params(g, q)
    if quantize is None or g.const(q.inputs[1]).dtype != np.float32:
        return None
    dequantize_op, pool_op, quantize_op = (OPS[n.op_type].build(n) for n in (dq, node, q))
    dq_args, q_args = [g.const(i) for i in dq.inputs[1:3]], [g.const(i) for i in q.inputs[1:3]]

    def fallback(xq):
        return quantize_op(pool_op(dequantize_op(xq, *dq_args)), *q_args)

    kernel_step = int8.QLinearAveragePool(Window(node, kernel), kernel, bool(node.attr("count_include_pad", 0)),
                                          x[1], x[2], quantize[0], quantize[1], fallback)
    spec = NodeSpec(name=node.name, op_type="Int8AveragePool", inputs=[x[0]], outputs=[q.outputs[0]], attrs={},
                    consts=[None], opset=node.opset, threads=node.threads)
    return LoweredGroup(spec, kernel_step, [node, q])


def _lower_activation_matmul(g: _Graph, node: NodeSpec, a, b) -> LoweredGroup:
    """A MatMul of two dequantized activations (attention's Q·Kᵀ): exact integer sums, requantized
    as onnxruntime's QLinearMatMul does."""
    out, quantize, relu, clip, tail = _epilogue_tail(g, node)
    clamp = (0, 255)
    if quantize is not None:
        low, high = max(-np.inf if clip is None else clip[0], 0.0 if relu else -np.inf), \
            np.inf if clip is None else clip[1]
        clamp = (int8.bound(low, quantize), int8.bound(high, quantize))
    int8_matmul = int8.ActivationProduct(a[2], b[2], np.float32(a[1] * b[1]), quantize, clamp)
    spec = NodeSpec(name=node.name, op_type="Int8MatMul", inputs=[a[0], b[0]], outputs=[out], attrs={},
                    consts=[None, None], opset=node.opset, threads=node.threads)
    return LoweredGroup(spec, int8_matmul, [node] + tail)


def lower_qdq(specs: list[NodeSpec], consts: dict[str, np.ndarray], graph_outputs: set[str]):
    """Replace every lowerable QDQ group; returns the new node list and the groups made."""
    g = _Graph(specs, consts, graph_outputs)
    groups: dict[int, LoweredGroup] = {}
    absorbed: set[int] = set()
    for spec in specs:
        if id(spec) in absorbed:
            continue
        group = _try_lower(g, spec)
        if group is None:
            continue
        groups[id(spec)] = group
        absorbed.update(id(m) for m in group.replaced if m is not spec)
    result = []
    for spec in specs:
        if id(spec) in absorbed:
            continue
        result.append(groups[id(spec)].spec if id(spec) in groups else spec)
    made = list(groups.values())
    result = _compose_tables(result, made, consts)
    result = drop_unused(result, graph_outputs)
    # onnxruntime's QLinearSoftmax first: its Q → DQ edge must not become a QuantizeDequantize
    result = _fuse_layer_norms(result, made, consts, graph_outputs, legacy_softmax_only=True)
    result = _fuse_quantize_edges(result, made, consts, graph_outputs)
    result = _fuse_layer_norms(result, made, consts, graph_outputs)
    return drop_unused(result, graph_outputs), made


def _fuse_layer_norms(specs: list[NodeSpec], groups: list[LoweredGroup], consts, graph_outputs,
                      legacy_softmax_only: bool = False) -> list[NodeSpec]:
    """``DQ → LayerNormalization → Q`` (per-tensor uint8 both sides, only the normalized output
    used) and ``DQ → Softmax (last axis) → Q`` become one step on uint8 rows
    (:class:`int8.QuantizedLayerNorm`, :class:`int8.QuantizedSoftmax`), computing what the three
    steps compute. ``DQ → Softmax → Q`` before opset 13 becomes onnxruntime's QLinearSoftmax
    (:class:`int8.QLinearSoftmax`, rule 13); ``legacy_softmax_only``: only those."""
    producer, sole_reader = _producers_and_sole_reader(specs, graph_outputs)

    removed, replacements = set(), {}
    for spec in specs:
        softmax = spec.op_type == "Softmax" and spec.opset >= 13 and spec.attr("axis", -1) == -1
        legacy_softmax = spec.op_type == "Softmax" and spec.opset < 13
        if legacy_softmax_only and not legacy_softmax:
            continue
        if not softmax and not legacy_softmax and spec.op_type != "LayerNormalization":
            continue
        if spec.num_outputs() != 1 or not spec.outputs[0] or spec.attr("stash_type", 1) != 1 \
                or spec.inputs[0] in consts:
            continue
        dq = producer.get(spec.inputs[0])
        q = sole_reader(spec.outputs[0])
        if dq is None or dq.op_type != "DequantizeLinear" or sole_reader(dq.outputs[0]) is not spec \
                or q is None or q.op_type != "QuantizeLinear" or q.inputs[0] != spec.outputs[0]:
            continue
        dq_params, q_params = _per_tensor_uint8(dq, consts), _per_tensor_uint8(q, consts)
        if dq_params is None or q_params is None or dq.inputs[0] in consts:
            continue
        float_kernel = OPS[spec.op_type].build(spec)
        dequantize, quantize = OPS["DequantizeLinear"].build(dq), OPS["QuantizeLinear"].build(q)
        dq_args, q_args = [consts[i] for i in dq.inputs[1:3]], [consts[i] for i in q.inputs[1:3]]
        if legacy_softmax:
            kernel = int8.QLinearSoftmax(spec.attr("axis", 1), dq_params[0], *q_params,
                                         lambda x, s=float_kernel, f=dequantize, a=dq_args, g=quantize, b=q_args:
                                         g(s(f(x, *a)), *b))
        elif softmax:
            kernel = int8.QuantizedSoftmax(*dq_params, *q_params, lambda x, s=float_kernel, f=dequantize, a=dq_args,
                                           g=quantize, b=q_args: g(s(f(x, *a)), *b))
        else:
            kernel = int8.QuantizedLayerNorm(
                spec.attr("axis", -1), spec.attr("epsilon", 1e-5), *dq_params, *q_params, float_kernel,
                lambda x, f=dequantize, a=dq_args: f(x, *a), lambda y, f=quantize, a=q_args: f(y, *a))
        inputs = [dq.inputs[0]] + spec.inputs[1:]
        fused = NodeSpec(name=spec.name, op_type="Int8Softmax" if softmax or legacy_softmax else "Int8LayerNorm",
                         inputs=inputs,
                         outputs=list(q.outputs),
                         attrs={}, consts=[consts.get(i) if i else None for i in inputs], opset=spec.opset,
                         threads=spec.threads)
        groups.append(LoweredGroup(fused, kernel, [dq, spec, q]))
        replacements[id(spec)] = fused
        removed.update((id(dq), id(q)))
    return [replacements.get(id(s), s) for s in specs if id(s) not in removed]


_LEVELS = np.arange(256, dtype=np.uint8)


def _compose_tables(specs: list[NodeSpec], groups: list[LoweredGroup], consts) -> list[NodeSpec]:
    """Chains of lowered steps that each map one uint8 value (lookup tables, and Int8Add/Int8Mul
    of two tensors that are both such functions of one tensor: HardSwish spelled
    ``x * clip(x + 3, 0, 6) / 6``) become one table on the chain's source: the later tables are
    indexed by the earlier ones, the binary kernels run once on the 256 levels. Exact by
    construction; the intermediate steps are left for :func:`drop_unused` when nothing else
    reads their outputs."""
    by_spec = {id(group.spec): group for group in groups}
    # tensor → (source tensor, table on the source's 256 levels, min_rank)
    functions: dict[str, tuple[str, np.ndarray, int]] = {}

    def function_of(tensor):
        return functions.get(tensor, (tensor, _LEVELS, 0))

    for spec in specs:
        group = by_spec.get(id(spec))
        if group is None or len(spec.outputs) != 1:
            continue
        kernel = group.kernel
        if isinstance(kernel, int8.TableLookup) and kernel.table.dtype == np.uint8:
            source, table, rank = function_of(spec.inputs[0])
            composed = (source, kernel.table[table], max(rank, kernel.min_rank))
        elif (isinstance(kernel, (int8.QLinearAdd, int8.QLinearMul)) and len(spec.inputs) == 2
              and spec.inputs[0] not in consts and spec.inputs[1] not in consts):
            a, b = function_of(spec.inputs[0]), function_of(spec.inputs[1])
            if a[0] != b[0]:
                continue
            composed = (a[0], np.asarray(kernel(a[1], b[1]), np.uint8).reshape(-1), max(a[2], b[2]))
        else:
            continue
        functions[spec.outputs[0]] = composed
        if composed[0] != spec.inputs[0] or len(spec.inputs) != 1:
            group.kernel = int8.TableLookup(composed[1], composed[2])
            spec.op_type = "Int8Lookup"
            spec.inputs, spec.consts = [composed[0]], [consts.get(composed[0])]
    return specs


def _per_tensor_uint8(node: NodeSpec, consts) -> tuple[np.float32, int] | None:
    """(scale, zero point) of a Quantize/DequantizeLinear with constant per-tensor uint8
    parameters and no type or block attributes, else None."""
    if len(node.inputs) < 3 or node.attr("output_dtype", 0) or node.attr("block_size", 0):
        return None
    scale, zp = consts.get(node.inputs[1]), consts.get(node.inputs[2])
    if scale is None or zp is None or scale.size != 1 or zp.size != 1 or zp.dtype != np.uint8 \
            or scale.dtype != np.float32:
        return None
    return np.float32(scale.reshape(-1)[0]), int(zp.reshape(-1)[0])


def _producers_and_sole_reader(specs: list[NodeSpec], graph_outputs):
    """(tensor → producing spec, ``sole_reader(tensor)``: its only reader, None when it has
    several or none or is a graph output)."""
    consumers: dict[str, list[NodeSpec]] = {}
    producer = {}
    for spec in specs:
        for i in spec.inputs:
            if i:
                consumers.setdefault(i, []).append(spec)
        for o in spec.outputs:
            producer[o] = spec

    def sole_reader(tensor):
        users = consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in graph_outputs else None
    return producer, sole_reader


def _fuse_quantize_edges(specs: list[NodeSpec], groups: list[LoweredGroup], consts, graph_outputs) -> list[NodeSpec]:
    """One pass instead of two where a tensor's only reader is the next step:
    ``lookup → DequantizeLinear`` (a float32 table), ``QuantizeLinear → lookup`` (quantize and
    index at once) and ``QuantizeLinear → DequantizeLinear`` (quantize and dequantize)."""
    by_spec = {id(group.spec): group for group in groups}
    producer, sole_reader = _producers_and_sole_reader(specs, graph_outputs)

    def lookup_of(spec):
        group = by_spec.get(id(spec))
        return group if group is not None and isinstance(group.kernel, int8.TableLookup) else None

    removed = set()
    # lookup → DQ: the DQ reads the lookup's input through a float table
    for spec in specs:
        group = lookup_of(spec)
        reader = sole_reader(spec.outputs[0]) if group is not None and group.kernel.table.dtype == np.uint8 else None
        params = _per_tensor_uint8(reader, consts) if reader is not None and reader.op_type == "DequantizeLinear" \
            and reader.inputs[0] == spec.outputs[0] else None
        if params is None:
            continue
        table = (group.kernel.table.astype(np.int32) - params[1]).astype(np.float32) * params[0]
        group.kernel = int8.TableLookup(table, group.kernel.min_rank)
        spec.outputs = list(reader.outputs)
        spec.op_type = "Int8LookupDequantize"
        removed.add(id(reader))
        producer[spec.outputs[0]] = spec
    specs = [s for s in specs if id(s) not in removed]
    consumers = {}
    for spec in specs:
        for i in spec.inputs:
            if i:
                consumers.setdefault(i, []).append(spec)
    # Q → lookup and Q → DQ
    result = []
    for spec in specs:
        if id(spec) in removed:
            continue
        reader = sole_reader(spec.outputs[0]) if spec.op_type == "QuantizeLinear" and spec.inputs[0] not in consts else None
        params = _per_tensor_uint8(spec, consts) if reader is not None and reader.inputs[0] == spec.outputs[0] else None
        group = lookup_of(reader) if params is not None else None
        dq = _per_tensor_uint8(reader, consts) if params is not None and reader.op_type == "DequantizeLinear" else None
        if group is None and dq is None:
            result.append(spec)
            continue
        quantize = OPS["QuantizeLinear"].build(spec)
        scale, zp = consts[spec.inputs[1]], consts[spec.inputs[2]]
        fallback_q = lambda x, quantize=quantize, scale=scale, zp=zp: quantize(x, scale, zp)  # noqa: E731
        if group is not None:
            kernel = int8.QuantizeLookup(params[0], params[1], group.kernel, fallback_q)
            op_type = "QuantizeLookup"
        else:
            dequantize = OPS["DequantizeLinear"].build(reader)
            dq_scale, dq_zp = consts[reader.inputs[1]], consts[reader.inputs[2]]
            kernel = int8.QuantizeDequantize(params[0], params[1], dq[0], dq[1], fallback_q,
                                             lambda q, f=dequantize, s=dq_scale, z=dq_zp: f(q, s, z))
            op_type = "QuantizeDequantize"
        fused = NodeSpec(name=spec.name, op_type=op_type, inputs=[spec.inputs[0]], outputs=list(reader.outputs),
                         attrs={}, consts=[None], opset=spec.opset, threads=spec.threads)
        new_group = LoweredGroup(fused, kernel, [spec, reader])
        groups.append(new_group)
        by_spec[id(fused)] = new_group
        removed.add(id(reader))
        result.append(fused)
    return [s for s in result if id(s) not in removed]


def drop_unused(specs: list[NodeSpec], graph_outputs: set[str]) -> list[NodeSpec]:
    """Remove nodes none of whose outputs is used (the DequantizeLinear nodes lowering left)."""
    needed = set(graph_outputs)
    kept = []
    for spec in reversed(specs):
        if any(o in needed for o in spec.outputs if o):
            kept.append(spec)
            needed.update(i for i in spec.inputs if i)
    return kept[::-1]

