import numpy as np
from onnx import helper

from graphopt.passes.cleanup import ShapeInference
from graphopt.passes.fusion import BatchNormFolding

from .builders import const, model, ops, optimize, value

rng = np.random.default_rng(0)


def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def bn_params(channels: int, prefix: str = "bn"):
    names = [f"{prefix}_{p}" for p in ("scale", "bias", "mean", "var")]
    values = [rand(channels), rand(channels), rand(channels), np.abs(rand(channels)) + 0.5]
    return names, [const(n, v) for n, v in zip(names, values)]


def after(layer, x_shape, y_shape, inits, bn_attrs=None, extra_outputs=(), bn_outputs=("y",)):
    names, params = bn_params(y_shape[1])
    nodes = [layer, helper.make_node("BatchNormalization", [layer.output[0], *names], list(bn_outputs),
                                     **(bn_attrs or {}))]
    outputs = [value("y", y_shape)] + [value(name, shape) for name, shape in extra_outputs]
    return model(nodes, [value("x", x_shape)], outputs, list(inits) + params, opset=15)


def fold(m):
    result = optimize([ShapeInference(), BatchNormFolding()], m)
    return result, result.reports[-1].rewrites


def test_bn_folds_into_conv_with_and_without_bias():
    for inputs, inits in ((["x", "w"], [const("w", rand(4, 3, 3, 3))]),
                          (["x", "w", "b"], [const("w", rand(4, 3, 3, 3)), const("b", rand(4))])):
        conv = helper.make_node("Conv", inputs, ["c"], pads=[1, 1, 1, 1])
        result, rewrites = fold(after(conv, [1, 3, 6, 6], [1, 4, 6, 6], inits))
        assert ops(result.model) == ["Conv"] and rewrites == {"Conv+BatchNormalization": 1}
        assert result.model.graph.node[0].output == ["y"]  # the fused Conv writes BN's tensor
        assert result.provenance == {}  # "y" means the same thing; the pre-BN "c" is gone


def test_bn_folds_into_grouped_conv_transpose():
    conv = helper.make_node("ConvTranspose", ["x", "w"], ["c"], group=2, strides=[2, 2])
    result, rewrites = fold(after(conv, [1, 4, 5, 5], [1, 6, 10, 10], [const("w", rand(4, 3, 2, 2))]))
    assert ops(result.model) == ["ConvTranspose"] and rewrites == {"ConvTranspose+BatchNormalization": 1}


def test_bn_folds_into_gemm_with_transposed_weight_and_beta():
    gemm = helper.make_node("Gemm", ["x", "w", "c0"], ["c"], transB=1, beta=0.5)
    result, _ = fold(after(gemm, [2, 3], [2, 4], [const("w", rand(4, 3)), const("c0", rand(2, 4))]))
    assert ops(result.model) == ["Gemm"]


def test_bn_after_2d_matmul_becomes_gemm():
    result, rewrites = fold(after(helper.make_node("MatMul", ["x", "w"], ["c"]), [2, 3], [2, 4],
                                  [const("w", rand(3, 4))]))
    assert ops(result.model) == ["Gemm"] and rewrites == {"MatMul+BatchNormalization": 1}


def test_lone_bn_becomes_mul_add():
    result, rewrites = fold(after(helper.make_node("Relu", ["x"], ["c"]), [2, 4, 3], [2, 4, 3], []))
    assert ops(result.model) == ["Relu", "Mul", "Add"] and rewrites == {"BatchNormalization→Mul+Add": 1}


def test_bn_after_3d_matmul_is_not_folded_into_it():
    # BN's channel axis 1 is not MatMul's column axis: a lone BN instead.
    m = after(helper.make_node("MatMul", ["x", "w"], ["c"]), [2, 4, 3], [2, 4, 5], [const("w", rand(3, 5))])
    result, rewrites = fold(m)
    assert ops(result.model) == ["MatMul", "Mul", "Add"] and rewrites == {"BatchNormalization→Mul+Add": 1}


def test_conv_output_read_elsewhere_is_not_folded():
    names, params = bn_params(4)
    m = model([helper.make_node("Conv", ["x", "w"], ["c"]),
               helper.make_node("BatchNormalization", ["c", *names], ["y"]), helper.make_node("Relu", ["c"], ["z"])],
              [value("x", [1, 3, 4, 4])], [value("y", [1, 4, 2, 2]), value("z", [1, 4, 2, 2])],
              [const("w", rand(4, 3, 3, 3))] + params, opset=15)
    result, rewrites = fold(m)
    assert sorted(ops(result.model)) == ["Add", "Conv", "Mul", "Relu"] and "Conv+BatchNormalization" not in rewrites


def test_conv_output_that_is_a_graph_output_is_not_folded():
    conv = helper.make_node("Conv", ["x", "w"], ["c"])
    m = after(conv, [1, 3, 4, 4], [1, 4, 2, 2], [const("w", rand(4, 3, 3, 3))], extra_outputs=[("c", [1, 4, 2, 2])])
    result, rewrites = fold(m)
    assert "Conv" in ops(result.model) and "Conv+BatchNormalization" not in rewrites


def test_conv_with_non_constant_weight_is_not_folded():
    names, params = bn_params(4)
    m = model([helper.make_node("Conv", ["x", "w"], ["c"]),
               helper.make_node("BatchNormalization", ["c", *names], ["y"])],
              [value("x", [1, 3, 4, 4]), value("w", [4, 3, 3, 3])], [value("y", [1, 4, 2, 2])], params, opset=15)
    result, rewrites = fold(m)
    assert ops(result.model) == ["Conv", "Mul", "Add"] and "Conv+BatchNormalization" not in rewrites


def test_training_mode_bn_stays():
    names, params = bn_params(4)
    nodes = [helper.make_node("Relu", ["x"], ["c"]),
             helper.make_node("BatchNormalization", ["c", *names], ["y", "running_mean", "running_var"],
                              training_mode=1)]
    m = model(nodes, [value("x", [2, 4, 3])], [value("y", [2, 4, 3]), value("running_mean", [4]),
                                               value("running_var", [4])], params, opset=15)
    graph_ops = ops(optimize([ShapeInference(), BatchNormFolding()], m).model)
    assert graph_ops == ["Relu", "BatchNormalization"]


def test_bn_with_non_constant_statistics_stays():
    names, params = bn_params(4)
    m = model([helper.make_node("Relu", ["x"], ["c"]),
               helper.make_node("BatchNormalization", ["c", names[0], names[1], "mean", names[3]], ["y"])],
              [value("x", [2, 4, 3]), value("mean", [4])], [value("y", [2, 4, 3])],
              [params[0], params[1], params[3]], opset=15)
    assert ops(optimize([ShapeInference(), BatchNormFolding()], m).model) == ["Relu", "BatchNormalization"]


def test_per_activation_bn_of_old_opsets_stays():
    names, params = bn_params(4)
    m = model([helper.make_node("Relu", ["x"], ["c"]),
               helper.make_node("BatchNormalization", ["c", *names], ["y"], spatial=0)],
              [value("x", [2, 4])], [value("y", [2, 4])], params, opset=7)
    assert ops(optimize([ShapeInference(), BatchNormFolding()], m).model) == ["Relu", "BatchNormalization"]
