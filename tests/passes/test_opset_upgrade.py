import numpy as np
import onnx
import pytest
from onnx import helper

from graphopt.errors import PassError
from graphopt.passes import PassContext
from graphopt.passes.cleanup import OpsetUpgrade

from .builders import const, model, ops, optimize, run_unverified, value


def opset_9_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0]),
             helper.make_node("Dropout", ["u"], ["d"], ratio=0.5),
             helper.make_node("Reshape", ["d", "shape"], ["y"])]
    return model(nodes, [value("x", [2, 3])], [value("y", [3, 2])], [const("shape", [3, 2], np.int64)], opset=9)


def default_opset(m: onnx.ModelProto) -> int:
    return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))


def test_upgrade_to_the_context_target():
    result = optimize([OpsetUpgrade()], opset_9_model(), PassContext(target_opset=13))
    assert default_opset(result.model) == 13
    # Unsqueeze's axes and Dropout's ratio became inputs, fed by new Constant nodes.
    assert [op for op in ops(result.model) if op != "Constant"] == ["Unsqueeze", "Dropout", "Reshape"]
    unsqueeze = next(n for n in result.model.graph.node if n.op_type == "Unsqueeze")
    assert len(unsqueeze.input) == 2 and not unsqueeze.attribute
    assert result.reports[0].rewrites == {"opset 9 -> 13": 1}


def test_the_pass_target_wins_over_the_context():
    result = optimize([OpsetUpgrade(17)], opset_9_model(), PassContext(target_opset=13))
    assert default_opset(result.model) == 17


def test_already_at_the_target_changes_nothing():
    result = optimize([OpsetUpgrade(9)], opset_9_model())
    assert default_opset(result.model) == 9 and result.reports[0].rewrites == {}


def test_custom_domains_are_kept():
    m = model([helper.make_node("Mystery", ["x"], ["y"], domain="acme")], [value("x", [2])], [value("y", [2])],
              opset=11, domains={"acme": 1})
    graph, _ = run_unverified(OpsetUpgrade(13), m)
    assert graph.opset == 13 and [n.op for n in graph.nodes] == ["Mystery"]


@pytest.mark.parametrize("target, ctx_target, message", [
    (8, None, "does not downgrade"),
    (None, None, "no target opset"),
    (onnx.defs.onnx_opset_version() + 1, None, "newer than the installed onnx"),
])
def test_bad_targets_are_errors(target, ctx_target, message):
    with pytest.raises(PassError, match=message):
        run_unverified(OpsetUpgrade(target), opset_9_model(), PassContext(target_opset=ctx_target))


def test_a_failed_conversion_is_an_error():
    # BatchNormalization's training outputs do not exist after opset 13: the converter refuses.
    bn = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "mean", "var", "sm", "sv"])
    inits = [const(name, np.ones(3, np.float32)) for name in "sbmv"]
    m = model([bn], [value("x", [1, 3, 2, 2])], [value("y", [1, 3, 2, 2])], inits, opset=9)
    with pytest.raises(PassError, match="opset upgrade from 9 to 15 failed"):
        run_unverified(OpsetUpgrade(15), m)
