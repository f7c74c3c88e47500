"""Tiny float models for the quantize pass tests, and a runner that calibrates, quantizes and checks them."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from graphopt import model_io
from graphopt.calibration import calibration_data, collect_ranges
from graphopt.oracle import ort_session
from graphopt.passes import PassContext, PassManager, PipelineResult
from graphopt.verify import cosine_similarity

from .builders import const, model, value

RNG_SEED = 0


def weight(shape, scale: float = 0.1, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def conv(name: str, x: str, w: str, b: str | None, y: str, **attrs) -> onnx.NodeProto:
    return helper.make_node("Conv", [x, w] + ([b] if b else []), [y], name=name, pads=[1, 1, 1, 1], **attrs)


def conv_relu_pool_conv(opset: int = 17) -> onnx.ModelProto:
    """x[1,16,8,8] -> Conv(16) -> Relu -> MaxPool -> Conv(16) -> y: both depths K = Cin*9 = 144."""
    nodes = [conv("conv1", "x", "w1", "b1", "c1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             conv("conv2", "p1", "w2", "b2", "y")]
    inits = [const("w1", weight((16, 16, 3, 3), seed=1)), const("b1", weight(16, seed=2)),
             const("w2", weight((16, 16, 3, 3), seed=3)), const("b2", weight(16, seed=4))]
    return model(nodes, [value("x", [1, 16, 8, 8])], [value("y", [1, 16, 4, 4])], inits, opset=opset)


def samples(m: onnx.ModelProto, count: int = 4, scale: float = 1.0, seed: int = RNG_SEED) -> list[dict]:
    """Feed dicts for every input of ``m``, N(0, scale²), fixed dims from the model (symbolic -> 2)."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        batch = {}
        for info in m.graph.input:
            dims = [d.dim_value or 2 for d in info.type.tensor_type.shape.dim]
            batch[info.name] = (rng.standard_normal(dims) * scale).astype(np.float32)
        feeds.append(batch)
    return feeds


def calibrate(pass_, m: onnx.ModelProto, feeds: list[dict]):
    """Set ``pass_.ranges`` from min/max over ``feeds``, as graphopt.quantize does."""
    data = calibration_data(feeds, m)
    pass_.ranges = collect_ranges(m, pass_.calibration_tensors(model_io.to_graph(m)), data)
    return pass_


def apply(passes, m: onnx.ModelProto) -> PipelineResult:
    """Run the passes; the result must pass the ONNX checker and load on onnxruntime."""
    result = PassManager(passes, PassContext()).apply(m)
    onnx.checker.check_model(result.model)
    ort_session(result.model, optimize=True)
    return result


def outputs_cosine(original: onnx.ModelProto, quantized: onnx.ModelProto, feeds: list[dict]) -> float:
    ref, got = ort_session(original), ort_session(quantized, optimize=True)
    return min(cosine_similarity(a, b) for f in feeds for a, b in zip(ref.run(None, f), got.run(None, f)))


def onnxruntime_ops(m: onnx.ModelProto, tmp_path) -> list[str]:
    """Op types after onnxruntime's own graph optimizations (what actually runs)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.log_severity_level = 3
    ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def node(m: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in m.graph.node if n.name == name)


def producer(m: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    return next((n for n in m.graph.node if tensor in n.output), None)


def initializer(m: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == name))


def attr(n: onnx.NodeProto, name: str, default=None):
    found = [a for a in n.attribute if a.name == name]
    return helper.get_attribute_value(found[0]) if found else default
