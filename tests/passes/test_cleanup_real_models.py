"""The full cleanup pipeline on the light real models that ship with onnx (weights are ConstantOfShape)."""
import glob
import os

import onnx
import pytest

from graphopt import model_io
from graphopt.passes import PassContext, PassManager
from graphopt.passes.cleanup import cleanup_passes

LIGHT_MODELS = sorted(glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/light_*.onnx")))


def model_id(path: str) -> str:
    return os.path.basename(path)[len("light_"):-len(".onnx")]


def run_cleanup(path: str, ctx: PassContext):
    original = model_io.load_model(path)
    result = PassManager(cleanup_passes(ctx), ctx).run(original)
    assert result.ok, (result.culprit, result.verification)
    onnx.checker.check_model(result.model)
    return original, result


def test_the_light_models_are_there():
    assert len(LIGHT_MODELS) == 9


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=model_id)
def test_cleanup_keeps_outputs_and_does_not_grow(path):
    original, result = run_cleanup(path, PassContext())
    after = [n.op_type for n in result.model.graph.node]
    assert len(after) < len(original.graph.node)
    # Every weight is folded except those over the fold limit, which the report names.
    too_large = [note for r in result.reports for note in r.notes if "over the fold limit" in note]
    assert after.count("ConstantOfShape") == len(too_large)
    assert "Dropout" not in after


@pytest.mark.parametrize("name", ["squeezenet", "resnet50"])
def test_cleanup_with_an_opset_upgrade(name):
    path = next(p for p in LIGHT_MODELS if model_id(p) == name)
    original, result = run_cleanup(path, PassContext(target_opset=13))
    assert next(o.version for o in result.model.opset_import if o.domain == "") == 13
    assert len(result.model.graph.node) < len(original.graph.node)


def test_cleanup_of_a_cleaned_model_changes_nothing():
    path = next(p for p in LIGHT_MODELS if model_id(p) == "inception_v1")
    _, first = run_cleanup(path, PassContext())
    ctx = PassContext()
    second = PassManager(cleanup_passes(ctx), ctx).run(first.model)
    assert second.ok
    assert [r.name for r in second.reports if r.rewrites] == []
    assert len(second.model.graph.node) == len(first.model.graph.node)
