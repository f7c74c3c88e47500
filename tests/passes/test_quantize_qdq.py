"""QDQInsertion on tiny hand-built graphs: one test per rule and per must-not case."""
import numpy as np
import onnx
import pytest
from onnx import helper

from graphopt.calibration import TensorRange
from graphopt.errors import PassError
from graphopt.passes.cleanup import OpsetUpgrade
from graphopt.passes.quantize import QDQInsertion
from graphopt.passes.quantize.int8_params import INT32_MAX
from graphopt.quantize import quantize

from .builders import const, model, ops, value
from .quantize_builders import (
    apply,
    attr,
    calibrate,
    conv,
    conv_relu_pool_conv,
    initializer,
    node,
    onnxruntime_ops,
    outputs_cosine,
    producer,
    samples,
    weight,
)


def quantized(m, feeds=None, **options):
    feeds = feeds or samples(m)
    return apply([calibrate(QDQInsertion(**options), m, feeds)], m), feeds


def weight_dq(m, conv_name, index=1):
    """The DequantizeLinear feeding input ``index`` of node ``conv_name``."""
    return producer(m, node(m, conv_name).input[index])


def test_conv_weights_per_channel_bias_int32_and_onnxruntime_fuses_qlinearconv(tmp_path):
    original = conv_relu_pool_conv()
    result, feeds = quantized(original)
    q = result.model
    dq = weight_dq(q, "conv1")
    assert dq.op_type == "DequantizeLinear" and attr(dq, "axis") == 0
    w_q, w_scale = initializer(q, dq.input[0]), initializer(q, dq.input[1])
    assert w_q.dtype == np.int8 and w_scale.shape == (16,) and np.abs(w_q).max() == 127
    x_scale = initializer(q, producer(q, node(q, "conv1").input[0]).input[1])
    bias_dq = weight_dq(q, "conv1", 2)
    b_q, b_scale = initializer(q, bias_dq.input[0]), initializer(q, bias_dq.input[1])
    assert b_q.dtype == np.int32 and np.array_equal(b_scale, (np.float64(x_scale) * w_scale).astype(np.float32))
    assert outputs_cosine(original, q, feeds) > 0.999
    # conv2 writes the graph output, which stays fp32 (no Q after it): onnxruntime fuses conv1 only.
    assert onnxruntime_ops(q, tmp_path).count("QLinearConv") == 1


def test_relu_moves_the_q_and_maxpool_shares_the_scale():
    result, _ = quantized(conv_relu_pool_conv())
    q = result.model
    relu_q = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "r1")
    pool_q = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "p1")
    assert relu_q.input[1:] == pool_q.input[1:]  # one scale, one zero point
    assert initializer(q, relu_q.input[2]) == 0  # Relu output: [0, max] -> zero point 0 (onnxruntime drops the Relu)
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == "c1" for n in q.graph.node)


def test_one_qdq_per_tensor_and_provenance_names_the_fp32_tensor():
    result, _ = quantized(conv_relu_pool_conv())
    assert result.provenance["x_dequantized"] == ["x"]
    assert result.provenance["p1_dequantized"] == ["p1"]
    assert [n.input[0] for n in result.model.graph.node if n.op_type == "QuantizeLinear"] == ["x", "r1", "p1"]


def test_graph_output_keeps_its_name_and_fp32():
    result, _ = quantized(conv_relu_pool_conv())
    assert [o.name for o in result.model.graph.output] == ["y"]
    assert producer(result.model, "y").op_type == "Conv"


def test_gemm_and_matmul_weight_axes():
    nodes = [helper.make_node("Gemm", ["x", "wt", "b"], ["h"], name="gemm", transB=1),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="matmul")]
    m = model(nodes, [value("x", [2, 64])], [value("y", [2, 8])],
              [const("wt", weight((32, 64))), const("b", weight(32)), const("w", weight((32, 8), seed=5))])
    result, feeds = quantized(m)
    q = result.model
    assert attr(weight_dq(q, "gemm"), "axis") == 0 and attr(weight_dq(q, "matmul"), "axis") == 1
    assert initializer(q, weight_dq(q, "matmul").input[1]).shape == (8,)
    assert outputs_cosine(m, q, feeds) > 0.999


def test_per_tensor_option():
    result, _ = quantized(conv_relu_pool_conv(), per_channel=False)
    dq = weight_dq(result.model, "conv1")
    assert attr(dq, "axis") is None and initializer(result.model, dq.input[1]).shape == ()


def test_s8_activations():
    result, feeds = quantized(conv_relu_pool_conv(), activation_type="s8")
    q_node = next(n for n in result.model.graph.node if n.op_type == "QuantizeLinear")
    assert initializer(result.model, q_node.input[2]).dtype == np.int8
    assert outputs_cosine(conv_relu_pool_conv(), result.model, feeds) > 0.999


def test_below_opset_13_the_pass_writes_per_tensor_weights_never_an_axis():
    m = conv_relu_pool_conv(opset=11)
    result, feeds = quantized(m)
    dqs = [n for n in result.model.graph.node if n.op_type == "DequantizeLinear"]
    assert dqs and all(attr(n, "axis") is None for n in dqs)
    assert any("per-tensor weights" in note for note in result.reports[0].notes)
    assert outputs_cosine(m, result.model, feeds) > 0.999


def test_below_opset_13_the_api_upgrades_and_keeps_per_channel():
    m = conv_relu_pool_conv(opset=11)
    result = quantize(m, samples(m))
    assert result.model.opset_import[0].version == 13
    names = [r.name for r in result.reports]
    assert OpsetUpgrade.name in names and names[-1] == QDQInsertion.name  # cleanup passes between
    assert [r.name for r in quantize(m, samples(m), cleanup=False).reports] == [OpsetUpgrade.name, QDQInsertion.name]
    assert attr(weight_dq(result.model, "conv1"), "axis") == 0


def mixed_concat_model(box_scale: float) -> onnx.ModelProto:
    """Two convs of x -> Concat -> Conv: "boxes" scaled by box_scale, "scores" in [0, 1]; depths 144."""
    nodes = [conv("box", "x", "wb", None, "b0"),
             helper.make_node("Mul", ["b0", "k"], ["boxes"], name="scale"),
             conv("cls", "x", "wc", None, "c0"),
             helper.make_node("Sigmoid", ["c0"], ["scores"], name="sigmoid"),
             helper.make_node("Concat", ["boxes", "scores"], ["cat"], name="cat", axis=1),
             conv("head", "cat", "wh", None, "y")]
    inits = [const("wb", weight((8, 16, 3, 3), seed=1)), const("wc", weight((8, 16, 3, 3), seed=2)),
             const("k", np.float32(box_scale)), const("wh", weight((8, 16, 3, 3), seed=3))]
    return model(nodes, [value("x", [1, 16, 8, 8])], [value("y", [1, 8, 8, 8]), value("cat", [1, 16, 8, 8])], inits)


def test_concat_of_very_different_ranges_stays_fp32_and_scores_survive():
    m = mixed_concat_model(640.0)
    result, feeds = quantized(m)
    q = result.model
    assert producer(q, node(q, "head").input[0]).op_type == "Concat"  # no Q/DQ on the mixed tensor
    assert any("Concat" in note and "kept fp32" for note in result.reports[0].notes)
    assert any("head: kept fp32" in note for note in result.reports[0].notes)
    # The scores half of the concatenated output is untouched by quantization.
    from graphopt.oracle import ort_session
    ref, got = ort_session(m).run(["cat"], feeds[0])[0], ort_session(q).run(["cat"], feeds[0])[0]
    np.testing.assert_allclose(got[:, 8:], ref[:, 8:], atol=0.02)


def test_concat_of_similar_ranges_is_quantized_downstream():
    result, _ = quantized(mixed_concat_model(0.1))  # both halves span about 1
    q = result.model
    assert producer(q, node(q, "head").input[0]).op_type == "DequantizeLinear"
    assert "Concat kept fp32" not in result.reports[0].rewrites


def bias_model(bias) -> onnx.ModelProto:
    nodes = [conv("conv", "x", "w", "b", "y")]
    w = weight((8, 16, 3, 3), scale=1e-3)
    return model(nodes, [value("x", [1, 16, 4, 4])], [value("y", [1, 8, 4, 4])],
                 [const("w", w), const("b", np.broadcast_to(np.float32(bias), (8,)))])


@pytest.mark.parametrize("growth, rule", [(2.0, "bias overflow: weight scale raised"),
                                          (1000.0, "bias overflow: bias kept fp32")])
def test_int32_bias_overflow_never_crashes(growth, rule):
    m = bias_model(0.0)
    feeds = samples(m, scale=1e-4)
    probe = calibrate(QDQInsertion(), m, feeds)
    x_scale = (probe.ranges["x"].high - probe.ranges["x"].low) / 255
    w_scale = np.abs(initializer(m, "w")).reshape(8, -1).max(axis=1) / 127
    bias = growth * INT32_MAX * x_scale * w_scale  # needs `growth` times the weight scale to fit int32
    m = bias_model(bias.astype(np.float32))
    result, _ = quantized(m, feeds)
    q = result.model
    assert result.reports[0].rewrites[rule] == 1
    conv_node = node(q, "conv")
    if "raised" in rule:
        b_q = initializer(q, weight_dq(q, "conv", 2).input[0])
        assert b_q.dtype == np.int32 and np.abs(b_q.astype(np.int64)).max() <= INT32_MAX
    else:
        assert initializer(q, conv_node.input[2]).dtype == np.float32
    assert outputs_cosine(m, q, feeds) > 0.99


def hardswish_chain(depthwise: bool = False) -> onnx.ModelProto:
    """Conv -> HardSwish -> (x * HardSigmoid(x)) -> Add -> Conv: MobileNetV3's arithmetic."""
    first = ("dw", "x", "wd", None, "c0") if depthwise else ("conv1", "x", "w1", None, "c0")
    nodes = [conv(*first, **({"group": 16} if depthwise else {})),
             helper.make_node("HardSwish", ["c0"], ["h0"], name="hswish"),
             helper.make_node("HardSigmoid", ["h0"], ["g0"], name="hsigmoid"),
             helper.make_node("Mul", ["h0", "g0"], ["m0"], name="mul"),
             helper.make_node("Add", ["m0", "x"], ["a0"], name="add"),
             conv("conv2", "a0", "w2", None, "y")]
    inits = [const("w1", weight((16, 16, 3, 3), seed=1)), const("wd", weight((16, 1, 3, 3), seed=1)),
             const("w2", weight((16, 16, 3, 3), seed=2))]
    return model(nodes, [value("x", [1, 16, 8, 8])], [value("y", [1, 16, 8, 8])], inits)


def test_hardswish_arithmetic_stays_fp32_without_qdq_churn():
    result, feeds = quantized(hardswish_chain())
    q = result.model
    elementwise = {"HardSwish", "HardSigmoid", "Mul", "Add"}
    for n in q.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert producer(q, n.input[0]) is None or producer(q, n.input[0]).op_type not in elementwise - {"Add"}
    # The only Q/DQ: conv2's input. conv1 feeds HardSwish (fused into onnxruntime's fp32 Conv): kept fp32.
    assert [n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"] == ["a0"]
    assert result.reports[0].rewrites["kept fp32: int8 not faster"] == 1
    assert outputs_cosine(hardswish_chain(), q, feeds) > 0.999


def test_shallow_convs_stay_fp32_unless_speed_rules_are_off():
    m = hardswish_chain(depthwise=True)
    result, _ = quantized(m)
    assert ops(result.model).count("QuantizeLinear") == 1  # depthwise (depth 9) stays fp32
    forced, _ = quantized(m, speed_rules=False)
    assert node(forced.model, "dw").input[1].endswith(tuple("0123456789"))
    assert producer(forced.model, node(forced.model, "dw").input[1]).op_type == "DequantizeLinear"


def test_exclude_by_op_or_name_and_keep_first_last():
    m = conv_relu_pool_conv()
    cases = [({"exclude": ["Conv"]}, {"conv1", "conv2"}), ({"exclude": ["conv2"]}, {"conv2"}),
             ({"keep_fp32": ["first"]}, {"conv1"}), ({"keep_fp32": ["first", "last"]}, {"conv1", "conv2"})]
    for options, fp32 in cases:
        result, _ = quantized(m, **options)
        kept = {n.name for n in result.model.graph.node if n.op_type == "Conv"
                and producer(result.model, n.input[1]) is None}
        assert kept == fp32, options


def test_unknown_names_are_errors():
    with pytest.raises(PassError, match="no node or op type named 'conv9'"):
        quantized(conv_relu_pool_conv(), exclude=["conv9"])
    with pytest.raises(PassError, match="'Conv9'"):
        quantized(conv_relu_pool_conv(), keep_fp32=["Conv9"])
    quantized(conv_relu_pool_conv(), exclude=["MatMul"])  # an ONNX op type the graph lacks is fine


def test_missing_range_and_old_opset_are_errors():
    m = conv_relu_pool_conv()
    with pytest.raises(PassError, match="no calibration range for tensor 'x'"):
        apply([QDQInsertion({"r1": TensorRange(0, 1, 0, 1)})], m)
    with pytest.raises(PassError, match="no calibration ranges"):
        apply([QDQInsertion()], m)
    with pytest.raises(PassError, match="has no QuantizeLinear"):
        apply([QDQInsertion({})], conv_relu_pool_conv(opset=9))


def test_a_conv_feeding_silu_is_quantized_its_output_has_two_readers():
    nodes = [conv("conv1", "x", "w1", None, "c0"),
             helper.make_node("Sigmoid", ["c0"], ["s0"], name="sigmoid"),
             helper.make_node("Mul", ["c0", "s0"], ["m0"], name="silu"),
             conv("conv2", "m0", "w2", None, "y")]
    m = model(nodes, [value("x", [1, 16, 8, 8])], [value("y", [1, 16, 8, 8])],
              [const("w1", weight((16, 16, 3, 3), seed=1)), const("w2", weight((16, 16, 3, 3), seed=2))])
    result, feeds = quantized(m)
    assert producer(result.model, node(result.model, "conv1").input[1]).op_type == "DequantizeLinear"
    assert "kept fp32: int8 not faster" not in result.reports[0].rewrites
    assert outputs_cosine(m, result.model, feeds) > 0.999
