import numpy as np
from onnx import helper

from graphopt.passes.cleanup import ShapeInference
from graphopt.passes.fusion import AffineFolding

from .builders import const, model, ops, optimize, run_unverified, value

rng = np.random.default_rng(1)


def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def fold(m):
    result = optimize([ShapeInference(), AffineFolding()], m)
    return ops(result.model), result.reports[-1].rewrites


def conv_then(op, c, *, c_first=False, pads=(0, 0, 0, 0), weight_input=False, x_shape=(1, 3, 5, 5)):
    """Conv(x) → op with the constant c (first operand if ``c_first``) → y."""
    operands = ["c", "k"] if c_first else ["k", "c"]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["k"], pads=list(pads)),
             helper.make_node(op, operands, ["y"])]
    out_hw = x_shape[2] - 2 + pads[0] + pads[2]
    inputs = [value("x", list(x_shape))]
    inits = [const("b", rand(4)), const("c", c)]
    if weight_input:
        inputs.append(value("w", [4, 3, 3, 3]))
    else:
        inits.append(const("w", rand(4, 3, 3, 3)))
    return model(nodes, inputs, [value("y", [1, 4, out_hw, out_hw])], inits)


def test_add_sub_mul_div_after_conv_fold_into_it():
    for op, c in (("Add", rand(1, 4, 1, 1)), ("Sub", rand(4, 1, 1)), ("Mul", rand(4, 1, 1)), ("Div", rand(1))):
        assert fold(conv_then(op, c)) == (["Conv"], {f"Conv+{op}": 1}), op


def test_constant_first_add_after_conv_folds():
    assert fold(conv_then("Add", rand(4, 1, 1), c_first=True)) == (["Conv"], {"Conv+Add": 1})


def test_chain_of_affine_ops_after_conv_folds_completely():
    m = conv_then("Mul", rand(4, 1, 1))
    m.graph.node[1].output[0] = "m"
    m.graph.node.append(helper.make_node("Add", ["m", "c2"], ["y"]))
    m.graph.initializer.append(const("c2", rand(4, 1, 1)))
    assert fold(m) == (["Conv"], {"Conv+Mul": 1, "Conv+Add": 1})


def test_add_after_conv_with_non_constant_weight_folds_but_mul_does_not():
    assert fold(conv_then("Add", rand(4, 1, 1), weight_input=True))[0] == ["Conv"]
    assert fold(conv_then("Mul", rand(4, 1, 1), weight_input=True))[0] == ["Conv", "Mul"]


def test_spatially_varying_or_enlarging_constants_stay():
    assert fold(conv_then("Add", rand(4, 3, 3)))[0] == ["Conv", "Add"]  # varies along H, W
    assert fold(conv_then("Mul", rand(2, 4, 1, 1)))[0] == ["Conv", "Mul"]  # would enlarge the batch axis
    assert fold(conv_then("Mul", rand(1, 1, 4, 1, 1)))[0] == ["Conv", "Mul"]  # would enlarge the rank


def test_division_by_zero_and_constant_minus_conv_stay():
    # Unverified: the division by zero makes inf, which verification cannot compare.
    divisor = np.array([1, 0, 2, 3], np.float32).reshape(4, 1, 1)
    graph, report = run_unverified(AffineFolding(), conv_then("Div", divisor))
    assert [n.op for n in graph.nodes] == ["Conv", "Div"] and not report.rewrites
    assert fold(conv_then("Sub", rand(4, 1, 1), c_first=True))[0] == ["Conv", "Sub"]


def test_conv_output_with_another_reader_or_graph_output_is_not_folded():
    m = conv_then("Add", rand(4, 1, 1))
    m.graph.output.append(value("k", [1, 4, 3, 3]))
    assert fold(m)[0] == ["Conv", "Add"]


def before_conv(op, c, pads, group=1):
    nodes = [helper.make_node(op, ["x", "c"], ["a"]),
             helper.make_node("Conv", ["a", "w"], ["y"], pads=list(pads), group=group)]
    size = 5 - 2 + pads[0] + pads[2]
    return model(nodes, [value("x", [1, 4, 5, 5])], [value("y", [1, 6, size, size])],
                 [const("c", c), const("w", rand(6, 4 // group, 3, 3))])


def test_scale_before_conv_folds_into_its_weights_even_with_padding():
    assert fold(before_conv("Mul", rand(4, 1, 1), (1, 1, 1, 1), group=2)) == (["Conv"], {"Mul+Conv": 1})
    assert fold(before_conv("Div", rand(1, 4, 1, 1), (1, 1, 1, 1))) == (["Conv"], {"Div+Conv": 1})


def test_shift_before_conv_folds_into_its_bias_only_without_padding():
    assert fold(before_conv("Add", rand(4, 1, 1), (0, 0, 0, 0), group=2)) == (["Conv"], {"Add+Conv": 1})
    assert fold(before_conv("Sub", rand(4, 1, 1), (0, 0, 0, 0))) == (["Conv"], {"Sub+Conv": 1})
    assert fold(before_conv("Add", rand(4, 1, 1), (1, 1, 1, 1)))[0] == ["Add", "Conv"]


def matmul_add(x_shape, w_shape, c, y_shape):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "c"], ["y"])]
    return model(nodes, [value("x", x_shape)], [value("y", y_shape)], [const("w", rand(*w_shape)), const("c", c)])


def test_2d_matmul_add_becomes_gemm():
    assert fold(matmul_add([2, 3], [3, 4], rand(4), [2, 4])) == (["Gemm"], {"MatMul+Add→Gemm": 1})
    assert fold(matmul_add([2, 3], [3, 4], rand(2, 1), [2, 4]))[0] == ["Gemm"]


def test_3d_matmul_add_stays_and_mismatched_bias_stays():
    assert fold(matmul_add([2, 5, 3], [3, 4], rand(4), [2, 5, 4]))[0] == ["MatMul", "Add"]
    assert fold(matmul_add([2, 3], [3, 4], rand(3, 2, 4), [3, 2, 4]))[0] == ["MatMul", "Add"]  # enlarges


def test_add_after_gemm_folds_into_c():
    nodes = [helper.make_node("Gemm", ["x", "w", "c0"], ["g"], beta=0.5, transB=1),
             helper.make_node("Add", ["c", "g"], ["y"])]
    m = model(nodes, [value("x", [2, 3])], [value("y", [2, 4])],
              [const("w", rand(4, 3)), const("c0", rand(4)), const("c", rand(2, 4))])
    assert fold(m) == (["Gemm"], {"Gemm+Add": 1})


def scale_shift_conv(mul_op, s, add_op="Add", pads=(1, 1, 1, 1), group=2):
    """Paddle's scale-and-shift before a padded (grouped) Conv: Conv(Mul(x, s) + c)."""
    nodes = [helper.make_node(mul_op, ["x", "s"], ["m"]), helper.make_node(add_op, ["m", "c"], ["a"]),
             helper.make_node("Conv", ["a", "w"], ["y"], pads=list(pads), group=group)]
    return model(nodes, [value("x", [1, 4, 5, 5])], [value("y", [1, 6, 5, 5])],
                 [const("s", s), const("c", rand(1)), const("w", rand(6, 4 // group, 3, 3))])


def test_scale_moves_through_a_shift_into_a_padded_conv():
    assert fold(scale_shift_conv("Mul", rand(4, 1, 1))) == (["Add", "Conv"], {"Mul+Add+Conv": 1})
    assert fold(scale_shift_conv("Div", rand(1, 4, 1, 1), "Sub")) == (["Sub", "Conv"], {"Div+Sub+Conv": 1})


def test_scale_with_a_zero_stays_before_a_padded_conv():
    s = np.array([1, 0, 2, 3], np.float32).reshape(4, 1, 1)
    assert fold(scale_shift_conv("Mul", s))[0] == ["Mul", "Add", "Conv"]
