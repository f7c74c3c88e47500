"""Channel pruning: removed channels disappear from every tensor and weight that carries them.

Each model has "dead" channels (zero weights and bias), so pruning exactly those leaves the outputs
unchanged and the PassManager's verification (onnxruntime, 1e-5) checks every rewrite."""
import numpy as np
import pytest
from onnx import helper, numpy_helper

from graphopt.passes import PassContext, PassManager
from graphopt.passes.cleanup import ShapeInference
from graphopt.passes.prune import ChannelPruning

from .builders import const, dims, model, optimize, value

rng = np.random.default_rng(4)
DEAD = [2, 5]


def conv_weight(cout, cin, k=3, dead=DEAD):
    w = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    w[dead] = 0.0
    return w


def bias(c, dead=DEAD):
    b = rng.standard_normal(c).astype(np.float32)
    b[dead] = 0.0
    return b


def conv(x, w, b, y, **attrs):
    return helper.make_node("Conv", [x, w, b], [y], pads=[1, 1, 1, 1], **attrs)


def prune_exactly(m, targets):
    result = optimize([ShapeInference(), ChannelPruning(targets)], m)
    return result, {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}


def test_conv_bn_relu_conv_loses_the_dead_channels_everywhere():
    nodes = [conv("x", "w1", "b1", "c1"),
             helper.make_node("BatchNormalization", ["c1", "s", "t", "mean", "var"], ["n1"]),
             helper.make_node("Relu", ["n1"], ["r1"]),
             conv("r1", "w2", "b2", "y")]
    inits = [const("w1", conv_weight(8, 3)), const("b1", bias(8)), const("s", rng.uniform(0.5, 2, 8)),
             const("t", np.zeros(8)), const("mean", np.zeros(8)), const("var", rng.uniform(0.5, 2, 8)),
             const("w2", rng.standard_normal((4, 8, 3, 3))), const("b2", rng.standard_normal(4))]
    inits = [const(t.name, numpy_helper.to_array(t).astype(np.float32)) for t in inits]
    m = model(nodes, [value("x", [1, 3, 6, 6])], [value("y", [1, 4, 6, 6])], inits)
    result, w = prune_exactly(m, {"w1": 0.25, "w2": 0.5})
    assert w["w1"].shape == (6, 3, 3, 3) and w["b1"].shape == (6,) and w["w2"].shape == (4, 6, 3, 3)
    assert all(w[name].shape == (6,) for name in ("s", "t", "mean", "var"))
    assert dims(result.model, "r1") == [1, 6, 6, 6]
    report = result.reports[-1]
    assert report.rewrites == {"output channels": 1, "input channels": 1}
    assert any("w2" in note and "graph input or output" in note for note in report.notes)  # rule 7


def residual_model():
    """r = relu(convA(x)); z = relu(convB(r) + r); y = convC(z). convA and convB share channels."""
    nodes = [conv("x", "wa", "ba", "a"), helper.make_node("Relu", ["a"], ["r"]),
             conv("r", "wb", "bb", "b"), helper.make_node("Add", ["b", "r"], ["s"]),
             helper.make_node("Relu", ["s"], ["z"]), conv("z", "wc", "bc", "y")]
    inits = [const("wa", conv_weight(8, 3)), const("ba", bias(8)), const("wb", conv_weight(8, 8)),
             const("bb", bias(8)), const("wc", conv_weight(4, 8, dead=[])), const("bc", bias(4, dead=[]))]
    return model(nodes, [value("x", [1, 3, 5, 5])], [value("y", [1, 4, 5, 5])], inits)


def test_a_residual_add_ties_its_producers_and_they_lose_the_same_channels():
    result, w = prune_exactly(residual_model(), {"wa": 0.25, "wb": 0.25, "wc": 0.5})
    assert w["wa"].shape == (6, 3, 3, 3) and w["wb"].shape == (6, 6, 3, 3) and w["wc"].shape == (4, 6, 3, 3)
    assert any(note.startswith("wa, wb: 8 -> 6") or note.startswith("wb, wa: 8 -> 6")
               for note in result.reports[-1].notes)


def test_tied_channels_are_pruned_together_or_not_at_all():
    m = residual_model()
    result = PassManager([ShapeInference(), ChannelPruning({"wa": 0.5})], PassContext()).apply(m)
    w = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert w["wa"].shape == (8, 3, 3, 3) and w["wb"].shape == (8, 8, 3, 3)
    assert any("tied to an excluded layer" in note for note in result.reports[-1].notes)


def test_a_concat_blocks_the_space():
    nodes = [conv("x", "w1", "b1", "c1"), helper.make_node("Concat", ["c1", "x"], ["cat"], axis=1),
             conv("cat", "w2", "b2", "y")]
    inits = [const("w1", conv_weight(8, 3)), const("b1", bias(8)), const("w2", conv_weight(4, 11, dead=[])),
             const("b2", bias(4, dead=[]))]
    m = model(nodes, [value("x", [1, 3, 5, 5])], [value("y", [1, 4, 5, 5])], inits)
    result = PassManager([ShapeInference(), ChannelPruning({"w1": 0.5, "w2": 0.5})], PassContext()).apply(m)
    assert not result.reports[-1].rewrites
    assert any("Concat" in note for note in result.reports[-1].notes)


def test_a_depthwise_conv_follows_its_input_channels():
    nodes = [conv("x", "w1", "b1", "c1"), conv("c1", "wd", "bd", "d", group=8),
             helper.make_node("Relu", ["d"], ["r"]), conv("r", "w2", "b2", "y")]
    inits = [const("w1", conv_weight(8, 3)), const("b1", bias(8)), const("wd", conv_weight(8, 1)),
             const("bd", bias(8)), const("w2", conv_weight(4, 8, dead=[])), const("b2", bias(4, dead=[]))]
    m = model(nodes, [value("x", [1, 3, 5, 5])], [value("y", [1, 4, 5, 5])], inits)
    result, w = prune_exactly(m, {"w1": 0.25})
    assert w["wd"].shape == (6, 1, 3, 3) and w["bd"].shape == (6,)
    depthwise = next(n for n in result.model.graph.node if n.input[1] == "wd")
    assert helper.get_attribute_value(depthwise.attribute[0]) == 6 or \
        {a.name: helper.get_attribute_value(a) for a in depthwise.attribute}["group"] == 6


@pytest.mark.parametrize("flatten", ["Flatten", "Reshape"])
def test_a_flatten_into_gemm_removes_each_channels_spatial_block(flatten):
    if flatten == "Flatten":
        node = helper.make_node("Flatten", ["r"], ["f"])
    else:
        node = helper.make_node("Reshape", ["r", "shape"], ["f"])
    w2 = rng.standard_normal((10, 8 * 16)).astype(np.float32)
    nodes = [conv("x", "w1", "b1", "c"), helper.make_node("Relu", ["c"], ["r"]), node,
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1)]
    inits = [const("w1", conv_weight(8, 3)), const("b1", bias(8)), const("w2", w2), const("b2", bias(10, dead=[])),
             const("shape", np.array([-1, 128], np.int64))]
    m = model(nodes, [value("x", [2, 3, 4, 4])], [value("y", [2, 10])], inits)
    result, w = prune_exactly(m, {"w1": 0.25})
    kept = [c for c in range(8) if c not in DEAD]
    assert np.array_equal(w["w2"], w2.reshape(10, 8, 16)[:, kept].reshape(10, -1))
    if flatten == "Reshape":
        assert w["shape"].tolist() == [-1, 96]


def test_a_squeeze_excite_mul_ties_the_gate_to_the_features():
    nodes = [conv("x", "w1", "b1", "c1"), helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Conv", ["p", "f1", "g1"], ["h"]), helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("Conv", ["hr", "f2", "g2"], ["e"]), helper.make_node("Sigmoid", ["e"], ["gate"]),
             helper.make_node("Mul", ["r", "gate"], ["m"]),
             helper.make_node("Mul", ["m", "scale"], ["ms"]), conv("ms", "w2", "b2", "y")]
    inits = [const("w1", conv_weight(8, 3)), const("b1", bias(8)), const("f1", conv_weight(4, 8, k=1, dead=[])),
             const("g1", bias(4, dead=[])), const("f2", conv_weight(8, 4, k=1)), const("g2", bias(8)),
             const("scale", rng.uniform(1, 2, (1, 8, 1, 1)).astype(np.float32)),
             const("w2", conv_weight(4, 8, dead=[])), const("b2", bias(4, dead=[]))]
    m = model(nodes, [value("x", [1, 3, 5, 5])], [value("y", [1, 4, 5, 5])], inits)
    result, w = prune_exactly(m, {"w1": 0.25, "f2": 0.25})
    assert w["f1"].shape == (4, 6, 1, 1) and w["f2"].shape == (6, 4, 1, 1) and w["g2"].shape == (6,)
    assert w["scale"].shape == (1, 6, 1, 1) and w["w2"].shape == (4, 6, 3, 3)


def test_at_least_one_channel_is_kept_and_shared_weights_get_a_fresh_name():
    nodes = [conv("x", "w1", "b1", "c1"), conv("x", "w1", "b1", "c2"),
             conv("c1", "w2", "b2", "y1"), conv("c2", "w2", "b2", "y2")]
    inits = [const("w1", conv_weight(8, 3)), const("b1", bias(8)), const("w2", conv_weight(4, 8, dead=[])),
             const("b2", bias(4, dead=[]))]
    m = model(nodes, [value("x", [1, 3, 5, 5])], [value("y1", [1, 4, 5, 5]), value("y2", [1, 4, 5, 5])], inits)
    result = PassManager([ShapeInference(), ChannelPruning({"w1": 0.99})], PassContext()).apply(m)
    shapes = sorted(tuple(t.dims) for t in result.model.graph.initializer)
    assert (1, 3, 3, 3) in shapes and (8, 3, 3, 3) not in shapes  # both Convs shrank, to one channel
    assert len({t.name for t in result.model.graph.initializer}) == len(result.model.graph.initializer)
