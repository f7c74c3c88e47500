import numpy as np
from onnx import helper

from graphopt.passes import PassContext, PassManager
from graphopt.passes.cleanup import OpsetUpgrade, cleanup_passes

from .builders import const, model, ops, optimize, value


def test_opset_upgrade_runs_before_the_rewrites_only_with_a_target():
    assert not any(isinstance(p, OpsetUpgrade) for p in cleanup_passes(PassContext()))
    assert isinstance(cleanup_passes(PassContext(target_opset=13))[1], OpsetUpgrade)


def test_dead_code_of_the_input_is_counted():
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Exp", ["x"], ["unused"])]
    ctx = PassContext()
    result = optimize(cleanup_passes(ctx), model(nodes, [value("x", [2])], [value("y", [2])]), ctx)
    assert result.reports[0].name == "dead-code-elimination"
    assert result.reports[0].rewrites == {"dead node": 1}


def test_pipeline_folds_a_shape_chain_behind_an_identity():
    # The Identity hides Shape from Gather until no-op elimination runs; the Reshape it feeds
    # is then a no-op once the target shape is folded.
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Identity", ["s"], ["s2"]),
             helper.make_node("Gather", ["s2", "one"], ["d"], axis=0),
             helper.make_node("Unsqueeze", ["d", "zero"], ["u"]),
             helper.make_node("Concat", ["minus_one", "u"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["r"]), helper.make_node("Relu", ["r"], ["y"])]
    inits = [const("one", 1, np.int64), const("zero", [0], np.int64), const("minus_one", [-1], np.int64)]
    m = model(nodes, [value("x", ["batch", 8])], [value("y", ["batch", 8])], inits)
    ctx = PassContext()
    result = optimize(cleanup_passes(ctx), m, ctx)
    assert ops(result.model) == ["Relu"]


def test_pipeline_result_names_no_culprit_on_success():
    m = model([helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
              [value("x", [2])], [value("y", [2])])
    ctx = PassContext()
    result = PassManager(cleanup_passes(ctx), ctx).run(m)
    assert result.ok and result.culprit is None
