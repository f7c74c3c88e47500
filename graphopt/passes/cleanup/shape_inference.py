"""Shape inference: ONNX's inferred dtypes and shapes, written back onto the graph's tensors."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.importers.onnx_importer import get_onnx_tensor_dtype, get_onnx_tensor_shape

from graphopt import model_io
from graphopt.passes.pipeline import PassContext, PassReport

# Constants with more elements than this reach ONNX shape inference as typed graph inputs, without
# their values: data propagation only reads small shape-like tensors, and leaving the weights out
# keeps the exported copy small (and under protobuf's 2 GiB limit).
VALUE_ELEMENTS_LIMIT = 1024

Dim = int | str | None


class ShapeInference:
    """Runs ONNX shape inference (strict mode off, data propagation on) and writes the inferred
    dtypes and shapes onto the graph's Variables, in the main graph and in subgraphs.

    Rules:
      1. A Variable with no dtype takes the inferred dtype.
      2. A Variable with no shape takes the inferred shape; symbolic dims stay strings (their
         ``dim_param`` names, or the ``unk__N`` names ONNX makes up for dims it cannot name),
         unknown dims stay ``None``.
      3. A Variable with a shape is refined dim by dim: an inferred fixed dim replaces a symbolic
         or unknown one, and an inferred symbolic dim replaces an unknown one.
      4. Shapes the model declares (value_info) are trusted: ONNX inference keeps them, so they
         are refined by rule 3, never contradicted.

    Must not:
      5. change graph inputs: their dtypes and shapes are what the user feeds.
      6. replace a fixed dim, or a symbolic dim the model names, with a less specific one.
      7. touch Constants: their values define their dtype and shape.
      8. fail on ops that ONNX cannot infer (custom domains, unknown ops): their outputs stay as
         they were. If ONNX shape inference itself raises, the graph is left unchanged and the
         error is noted in the report.
    """

    name = "shape-inference"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        try:
            inferred = onnx.shape_inference.infer_shapes(
                _typed_copy(graph), check_type=False, strict_mode=False, data_prop=True)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as exc:
            report.notes.append(f"ONNX shape inference failed, shapes left as they were: {exc}")
            return report
        self._write_back(graph, inferred.graph, report)
        return report

    def _write_back(self, graph: gs.Graph, proto: onnx.GraphProto, report: PassReport) -> None:
        infos = {info.name: info for info in (*proto.value_info, *proto.output)}
        inputs = {id(t) for t in graph.inputs}
        for tensor in graph.tensors().values():
            info = infos.get(tensor.name)
            if info is not None and isinstance(tensor, gs.Variable) and id(tensor) not in inputs:
                self._try_update(tensor, info, report)
        # The exported copy lists the nodes in graph order, so subgraphs pair up by position.
        for node, node_proto in zip(graph.nodes, proto.node):
            for attr in node_proto.attribute:
                if attr.type == onnx.AttributeProto.GRAPH and isinstance(node.attrs.get(attr.name), gs.Graph):
                    self._write_back(node.attrs[attr.name], attr.g, report)

    def _try_update(self, tensor: gs.Variable, info: onnx.ValueInfoProto, report: PassReport) -> bool:
        if not info.type.HasField("tensor_type") or info.type.tensor_type.elem_type == onnx.TensorProto.UNDEFINED:
            return False
        changed = False
        dtype = get_onnx_tensor_dtype(info)
        if tensor.dtype is None:
            tensor.dtype = dtype
            report.record("dtype")
            changed = True
        shape = _merge_shapes(tensor.shape, get_onnx_tensor_shape(info))
        if shape != (list(tensor.shape) if tensor.shape is not None else None):
            tensor.shape = shape
            report.record("shape")
            changed = True
        return changed


def _merge_shapes(known: list[Dim] | None, inferred: list[Dim] | None) -> list[Dim] | None:
    if inferred is None:
        return known
    if known is None or len(known) != len(inferred):
        return list(inferred)
    return [_merge_dim(k, i) for k, i in zip(known, inferred)]


def _merge_dim(known: Dim, inferred: Dim) -> Dim:
    if isinstance(inferred, int) or known is None:
        return inferred if inferred is not None else known
    return known


def _typed_copy(graph: gs.Graph) -> onnx.ModelProto:
    """A model of ``graph`` in which large constants are typed inputs without values."""
    shadow = graph.copy()
    for tensor in list(shadow.tensors().values()):
        if isinstance(tensor, gs.Constant) and int(np.prod(tensor.shape)) > VALUE_ELEMENTS_LIMIT:
            dtype, shape = tensor.export_dtype, list(tensor.shape)
            tensor.to_variable(dtype=dtype, shape=shape)
            tensor.type = "tensor_type"  # gs's Constant.to_variable does not set it; export reads it
            shadow.inputs.append(tensor)
    model = model_io.to_model(shadow)
    # IR < 4 requires initializers to be graph inputs, which the exported graph no longer lists.
    model.ir_version = max(model.ir_version,
                           onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True))
    return model
