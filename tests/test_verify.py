"""verify(), seeded feeds and the PassManager's search for the pass that broke a model."""
import numpy as np
import onnx_graphsurgeon as gs
import pytest

from graphopt.errors import InputSpecError
from graphopt.feeds import make_feeds, parse_dims
from graphopt.passes import PassContext, PassManager, PassReport
from graphopt.passes.pipeline import compose_provenance
from graphopt.verify import compare_output, verify
from tests.conftest import make_linear_model


def test_compare_output_metrics_on_known_cases():
    ref = np.array([1.0, -2.0, 4.0], np.float32)
    same = compare_output("y", ref, ref.copy(), 1e-5)
    assert same.ok and same.max_abs == 0 and same.cosine == pytest.approx(1.0)
    off = compare_output("y", ref, ref + np.array([0, 0.004, 0], np.float32), 1e-5)
    assert off.max_abs == pytest.approx(0.004, rel=1e-4)
    assert off.max_rel == pytest.approx(0.001, rel=1e-4)  # 0.004 / max|ref| = 0.004 / 4
    assert not off.ok
    assert compare_output("y", ref, ref + 1e-6, 1e-5).ok
    flipped = compare_output("y", ref, -ref, 1e-5)
    assert flipped.cosine == pytest.approx(-1.0)
    assert "shape" in compare_output("y", ref, ref[:2], 1e-5).problem
    assert "NaN" in compare_output("y", ref, np.array([1, np.nan, 4], np.float32), 1e-5).problem
    ints = np.array([1, 2, 3])
    assert compare_output("i", ints, ints.copy(), 1e-5).ok
    assert not compare_output("i", ints, ints + [0, 0, 1], 1e-5).ok


def test_feeds_are_seeded_and_resolve_dims():
    model = make_linear_model()
    a, b = make_feeds(model, seed=3), make_feeds(model, seed=3)
    np.testing.assert_array_equal(a["x"], b["x"])
    assert a["x"].shape == (1, 4) and a["x"].dtype == np.float32
    assert make_feeds(model, {"batch": 5})["x"].shape == (5, 4)
    assert parse_dims(["batch=2", "seq = 7"]) == {"batch": 2, "seq": 7}
    for bad in ["batch", "batch=", "batch=0", "=3", "batch=x"]:
        with pytest.raises(InputSpecError):
            parse_dims([bad])


def test_verify_detects_a_changed_weight():
    original = make_linear_model()
    assert verify(original, make_linear_model()).ok
    broken = make_linear_model()
    broken.graph.initializer[1].raw_data = np.ones(3, np.float32).tobytes()
    result = verify(original, broken, dims={"batch": 4})
    assert not result.ok and result.outputs[0].max_abs > 0.01
    assert result.input_shapes == {"x": [4, 4]}


class RenameTensor:
    """Renames the MatMul output; records that the new name stands for the old one."""
    name = "rename"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        tensor = graph.tensors()["xw"]
        tensor.name = "xw_renamed"
        report.record("rename", "xw_renamed", ["xw"])
        return report


class ReluToSigmoid:
    """A deliberately wrong rewrite."""
    name = "relu-to-sigmoid"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        for node in graph.nodes:
            if node.op == "Relu":
                node.op = "Sigmoid"
                report.record("Relu->Sigmoid")
        return report


class NoChange:
    name = "no-change"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        return PassReport(self.name)


def test_pipeline_names_the_first_pass_that_broke_the_model():
    result = PassManager([RenameTensor(), ReluToSigmoid(), NoChange()]).run(make_linear_model())
    assert not result.ok
    assert result.culprit == "relu-to-sigmoid"


def test_pipeline_passes_and_composes_provenance():
    result = PassManager([RenameTensor()]).run(make_linear_model())
    assert result.ok and result.culprit is None
    assert result.provenance == {"xw_renamed": ["xw"]}
    assert [r.rewrites["rename"] for r in result.reports] == [1]


def test_compose_provenance_maps_back_to_original_names():
    first = {"b": ["a1", "a2"]}
    assert compose_provenance(first, {"c": ["b", "z"]}) == {"b": ["a1", "a2"], "c": ["a1", "a2", "z"]}


def test_check_dims_names_the_typo_and_the_real_dims():
    from graphopt.feeds import check_dims

    check_dims(make_linear_model(), {"batch": 2})
    with pytest.raises(InputSpecError, match="--dim bacth: the model has no symbolic input dim") as info:
        check_dims(make_linear_model(), {"bacth": 2})
    assert "batch" in str(info.value)
