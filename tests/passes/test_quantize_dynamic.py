"""DynamicQuantization on tiny hand-built graphs."""
import numpy as np
import pytest
from onnx import helper

from graphopt.errors import PassError
from graphopt.passes.quantize import DynamicQuantization

from .builders import const, model, ops, value
from .quantize_builders import (
    apply,
    conv,
    initializer,
    node,
    onnxruntime_ops,
    outputs_cosine,
    producer,
    samples,
    weight,
)


def projections_and_conv():
    """Two MatMuls and a transB Gemm read the same x (Q/K/V-like), then a Conv on another input."""
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="query"),
             helper.make_node("MatMul", ["x", "wk"], ["k"], name="key"),
             helper.make_node("Gemm", ["x", "wv", "bv"], ["v"], name="value", transB=1),
             helper.make_node("Add", ["q", "k"], ["qk"], name="add"),
             helper.make_node("MatMul", ["qk", "v_t"], ["scores"], name="scores"),
             helper.make_node("Transpose", ["v"], ["v_t"], name="transpose"),
             conv("conv", "image", "wc", None, "features")]
    inits = [const("wq", weight((64, 32), seed=1)), const("wk", weight((64, 32), seed=2)),
             const("wv", weight((32, 64), seed=3)), const("bv", weight(32, seed=4)),
             const("wc", weight((8, 8, 3, 3), seed=5))]
    return model(nodes, [value("x", [4, 64]), value("image", [1, 8, 6, 6])],
                 [value("scores", [4, 4]), value("v", [4, 32]), value("features", [1, 8, 6, 6])], inits)


def test_matmul_and_gemm_become_matmulinteger_with_one_shared_dynamic_quantize():
    m = projections_and_conv()
    result = apply([DynamicQuantization()], m)
    q = result.model
    assert ops(q).count("MatMulInteger") == 3 and ops(q).count("DynamicQuantizeLinear") == 1
    assert ops(q).count("MatMul") == 1  # q·k^T-like product of two activations: no weight, untouched
    w_zero = initializer(q, node(q, "value_MatMulInteger").input[3])
    w_int8 = initializer(q, node(q, "value_MatMulInteger").input[1])
    assert w_int8.dtype == np.int8 and w_int8.shape == (64, 32) and w_zero.shape == (32,)  # per output column
    assert outputs_cosine(m, q, samples(m)) > 0.999


def test_conv_is_never_dynamically_quantized():
    result = apply([DynamicQuantization()], projections_and_conv())
    assert producer(result.model, "features").op_type == "Conv"
    assert "ConvInteger" not in ops(result.model)


def test_results_are_renamed_with_provenance_but_graph_outputs_keep_their_names():
    result = apply([DynamicQuantization()], projections_and_conv())
    assert result.provenance["q_dequantized"] == ["q"]
    assert producer(result.model, "v").op_type == "Add"  # graph output: same name, bias added last
    assert "v" not in result.provenance


def test_onnxruntime_fuses_the_pattern(tmp_path):
    result = apply([DynamicQuantization()], projections_and_conv())
    fused = onnxruntime_ops(result.model, tmp_path)
    assert "MatMulInteger" not in fused
    assert fused.count("DynamicQuantizeMatMul") + fused.count("MatMulIntegerToFloat") == 3


def test_per_tensor_and_exclusions():
    q = apply([DynamicQuantization(per_channel=False, exclude=["key"])], projections_and_conv()).model
    assert initializer(q, node(q, "query_MatMulInteger").input[3]).shape == ()
    assert producer(q, "k").op_type == "MatMul"


def test_gemm_with_alpha_is_left_alone():
    m = model([helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm", alpha=0.5)], [value("x", [2, 8])],
              [value("y", [2, 4])], [const("w", weight((8, 4)))])
    assert ops(apply([DynamicQuantization()], m).model) == ["Gemm"]


def test_s8_and_old_opsets_are_errors():
    with pytest.raises(PassError, match="uint8"):
        DynamicQuantization(activation_type="s8")
    m = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [value("x", [2, 8])], [value("y", [2, 4])],
              [const("w", weight((8, 4)))], opset=10)
    with pytest.raises(PassError, match="DynamicQuantizeLinear"):
        apply([DynamicQuantization()], m)
