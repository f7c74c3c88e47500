"""The onnx package's nine real models (its "light" copies: weights are ConstantOfShape nodes) on
graphopt's runtime, against onnxruntime on the same file and the same seeded inputs.

This is the real-model part of the ONNX backend suite with onnxruntime as the oracle: the suite's
own runner would compute expected outputs with onnx's pure-Python reference evaluator, which
takes minutes for these Conv-heavy graphs. Every weight of a light model is one repeated value,
which makes all channels alike; the test scales each element by a seeded factor in [0.5, 1.5)
(signs kept, so variances stay positive) so that the outputs are not trivially uniform.
"""
import glob
import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphopt.feeds import make_feeds
from graphopt.oracle import ort_session, run_oracle
from graphopt.runtime import Session

LIGHT = sorted(glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/light_*.onnx")))


def test_all_nine_real_models_are_found():
    assert len(LIGHT) == 9


def with_varied_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Replace each ConstantOfShape weight by an initializer of varied values of the same sign."""
    rng = np.random.default_rng(seed)
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            value = numpy_helper.to_array(onnx.helper.get_attribute_value(node.attribute[0]))
            shape = tuple(int(d) for d in shapes[node.input[0]])
            varied = value.reshape(()) * rng.uniform(0.5, 1.5, shape).astype(value.dtype)
            model.graph.initializer.append(numpy_helper.from_array(varied, node.output[0]))
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


@pytest.mark.parametrize("path", LIGHT, ids=[os.path.basename(p)[6:-5] for p in LIGHT])
def test_real_model_matches_onnxruntime(path):
    model = with_varied_weights(onnx.load(path))
    feeds = make_feeds(model, seed=0)
    expected = run_oracle(model, feeds, session=ort_session(model, optimize=True))
    got = Session(model).run(None, feeds)
    for (name, ref), value in zip(expected.items(), got):
        scale = float(np.max(np.abs(ref))) or 1.0
        assert value.shape == ref.shape, name
        assert float(np.max(np.abs(value - ref))) / scale <= 1e-4, name
        assert float(np.std(ref)) > 0, f"{name}: the reference output is constant, the test would prove nothing"
