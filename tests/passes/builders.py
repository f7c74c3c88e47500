"""Tiny hand-built ONNX models for the pass tests, and a runner that verifies every rewrite."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphopt import model_io
from graphopt.passes import Pass, PassContext, PassManager, PassReport, PipelineResult

# Every tool here (onnxruntime 1.32, the checker) reads IR 8; helper.make_model would write the newest.
IR_VERSION = 8
FLOAT = TensorProto.FLOAT


def value(name: str, shape: list[int | str | None] | None, dtype: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def const(name: str, values, dtype=None) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
          initializers: list[onnx.TensorProto] = (), *, opset: int = 17,
          value_info: list[onnx.ValueInfoProto] = (), domains: dict[str, int] | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=list(initializers),
                              value_info=list(value_info))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (domains or {}).items()]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def optimize(passes: list[Pass], original: onnx.ModelProto, ctx: PassContext | None = None) -> PipelineResult:
    """Run ``passes`` through the PassManager; the result must be valid ONNX and match on onnxruntime."""
    result = PassManager(passes, ctx).run(original)
    assert result.verification is not None and result.ok, result.verification
    onnx.checker.check_model(result.model)
    return result


def run_unverified(pass_: Pass, original: onnx.ModelProto, ctx: PassContext | None = None):
    """Run one pass on the graph directly, for models onnxruntime cannot run (custom ops)."""
    graph = model_io.to_graph(original)
    report: PassReport = pass_.run(graph, ctx or PassContext())
    graph.cleanup().toposort()
    return graph, report


def ops(m: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in m.graph.node]


def dims(m: onnx.ModelProto, name: str) -> list[int | str | None] | None:
    """The shape that ``m`` declares for tensor ``name`` (value_info or graph output)."""
    for info in (*m.graph.value_info, *m.graph.output):
        if info.name == name:
            if not info.type.tensor_type.HasField("shape"):
                return None
            return [d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None
                    for d in info.type.tensor_type.shape.dim]
    raise KeyError(name)
