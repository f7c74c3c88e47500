"""Constant folding: tensors that can be computed before run time become constants."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.importers.onnx_importer import get_itemsize

from graphopt import model_io
from graphopt.errors import GraphoptError
from graphopt.oracle import run_oracle
from graphopt.passes.pipeline import PassContext, PassReport

# Each run must draw new values, so their outputs are never constant.
NONDETERMINISTIC_OPS = frozenset({
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
})
# QDQ pairs are the quantized format itself (DESIGN.md): folding a DequantizeLinear of int8
# weights back into float weights would undo the quantization.
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
# gs leaves a node's domain None when the file does not set it.
DEFAULT_DOMAINS = (None, *model_io.DEFAULT_DOMAINS)
CONSTANT_VALUE_DTYPES = {
    "value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64,
}

Dim = int | str | None


class ConstantFolding:
    """Computes, before run time, every tensor that does not depend on the graph inputs.

    A folded tensor keeps its name, so no provenance is recorded. The report counts rules 1-3 as
    ``Constant``, ``Shape``, ``Size``, ``Gather(Shape)``, ``Slice(Shape)``, and rule 4 by the op of
    each node that folding removes.

    Rules:
      1. A ``Constant`` node (``value``, ``value_float(s)``, ``value_int(s)``) becomes a Constant
         tensor, i.e. an initializer.
      2. ``Shape`` (with its ``start``/``end``) and ``Size`` of a tensor whose dims are all fixed
         become constants.
      3. ``Gather`` and ``Slice`` (on axis 0) of a ``Shape`` become constants when the dims they
         pick are fixed, even if other dims of that shape are symbolic; their consumers then
         fold by rule 4, so ``Shape→Gather→Unsqueeze→Concat→Reshape`` chains fold as far as the
         dims involved are known.
      4. A node whose inputs are all constant is evaluated on onnxruntime and its outputs become
         Constants. All such nodes are evaluated in one session that outputs only the tensors
         read by nodes that stay (and graph outputs); if that session fails, each of those
         tensors is evaluated on its own, and any that still fails stays as it is (noted).
      5. A graph output that becomes constant is produced by a ``Constant`` node, keeping its
         name: a graph output that is an initializer is not valid for every tool.

    Must not fold:
      6. nondeterministic ops (RandomNormal, RandomUniform, RandomNormalLike, RandomUniformLike,
         Multinomial, Bernoulli): every run must draw new values.
      7. ops outside the default ONNX domain: their semantics are not ours to assume.
      8. QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear: see ``QDQ_OPS``.
      9. nodes with subgraphs (If, Loop, Scan), nor nodes inside subgraphs.
     10. a tensor larger than ``ctx.fold_limit_bytes`` (ConstantOfShape, Tile or Expand of a small
         constant into a huge tensor): the node stays and computes it at run time; the report's
         notes name it. When the size is known beforehand, the tensor is not even computed.
     11. string tensors and non-tensor values (sequences): Constants hold numeric arrays.
     12. a ``Constant`` node that produces a graph output (rule 5's result).
    """

    name = "constant-folding"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        graph.toposort()
        for node in list(graph.nodes):
            self._try_lower_constant(graph, node, report)
        for node in list(graph.nodes):
            self._try_fold_shape(graph, node, report)
        foldable = self._foldable_nodes(graph, ctx, report)
        folded = {id(node) for node in foldable}
        needed = [out for node in foldable for out in node.outputs if _is_needed(graph, out, folded)]
        values = self._evaluate(graph, needed, report)
        for tensor in needed:
            self._try_materialize(graph, tensor, values.get(tensor.name), ctx, report)
        _record_folded(graph, foldable, report)
        return report

    def _try_lower_constant(self, graph: gs.Graph, node: gs.Node, report: PassReport) -> bool:
        if node.op != "Constant" or node.domain not in DEFAULT_DOMAINS:
            return False
        if len(node.attrs) != 1 or len(node.outputs) != 1 or _is_graph_output(graph, node.outputs[0]):
            return False
        (attr, value), = node.attrs.items()
        if attr == "value" and isinstance(value, gs.Constant):
            values = value._values  # keeps lazily loaded weights unloaded
        elif attr in CONSTANT_VALUE_DTYPES:
            values = np.array(value, dtype=CONSTANT_VALUE_DTYPES[attr])
        else:
            return False
        out = node.outputs[0]
        out.to_constant(values)
        out.inputs.clear()
        report.record("Constant")
        return True

    def _try_fold_shape(self, graph: gs.Graph, node: gs.Node, report: PassReport) -> bool:
        if node.domain not in DEFAULT_DOMAINS or len(node.outputs) != 1:
            return False
        if isinstance(node.outputs[0], gs.Constant):
            return False
        fold = {"Shape": _shape_of, "Size": _size_of, "Gather": _gathered_dims, "Slice": _sliced_dims}.get(node.op)
        values = fold(node, graph.opset) if fold is not None else None
        if values is None:
            return False
        _replace_with_constant(graph, node.outputs[0], values)
        report.record(node.op if node.op in ("Shape", "Size") else f"{node.op}(Shape)")
        return True

    def _foldable_nodes(self, graph: gs.Graph, ctx: PassContext, report: PassReport) -> list[gs.Node]:
        """Nodes, in graph order, whose outputs can all be computed before run time."""
        constant: set[int] = set()
        foldable = []
        for node in graph.nodes:
            if self._can_fold(node, constant, ctx, report):
                foldable.append(node)
                constant.update(id(out) for out in node.outputs)
        return foldable

    def _can_fold(self, node: gs.Node, constant: set[int], ctx: PassContext, report: PassReport) -> bool:
        if not node.outputs or node.domain not in DEFAULT_DOMAINS:
            return False
        if node.op in NONDETERMINISTIC_OPS or node.op in QDQ_OPS or any(True for _ in node.subgraphs()):
            return False
        if any(isinstance(value, gs.Node.AttributeRef) for value in node.attrs.values()):
            return False
        if not all(isinstance(t, gs.Constant) or id(t) in constant for t in node.inputs if not t.is_empty()):
            return False
        for out in node.outputs:
            size = _known_nbytes(node, out)
            if size is not None and size > ctx.fold_limit_bytes:
                report.notes.append(_too_large(node, out, size, ctx))
                return False
        return True

    def _evaluate(self, graph: gs.Graph, tensors: list[gs.Tensor], report: PassReport) -> dict[str, np.ndarray]:
        if not tensors:
            return {}
        try:
            return _evaluate_on_onnxruntime(graph, tensors)
        except GraphoptError as exc:
            report.notes.append(f"folding {len(tensors)} tensors in one session failed ({exc}); "
                                "evaluating them one by one")
        values = {}
        for tensor in tensors:
            try:
                values.update(_evaluate_on_onnxruntime(graph, [tensor]))
            except GraphoptError as exc:
                report.notes.append(f"'{tensor.name}' not folded: {exc}")
        return values

    def _try_materialize(self, graph: gs.Graph, tensor: gs.Tensor, values, ctx: PassContext,
                         report: PassReport) -> bool:
        if not isinstance(values, np.ndarray) or values.dtype.kind in "OSUV":
            return False
        if values.nbytes > ctx.fold_limit_bytes:
            report.notes.append(_too_large(tensor.inputs[0], tensor, values.nbytes, ctx))
            return False
        _replace_with_constant(graph, tensor, values)
        return True


def _record_folded(graph: gs.Graph, foldable: list[gs.Node], report: PassReport) -> None:
    """Count, by op, the foldable nodes that nothing reads any more (their values are constants)."""
    gone: set[int] = set()
    for node in reversed(foldable):
        if all(not _is_graph_output(graph, out) and all(id(reader) in gone for reader in out.outputs)
               for out in node.outputs):
            gone.add(id(node))
            report.record(node.op)


def _is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(out is tensor for out in graph.outputs)


def _is_needed(graph: gs.Graph, tensor: gs.Tensor, folded: set[int]) -> bool:
    """Whether ``tensor`` must be materialised: read by a node that stays, or a graph output."""
    if tensor.is_empty() or tensor.inputs[0].op == "Constant":
        return False
    return _is_graph_output(graph, tensor) or any(id(reader) not in folded for reader in tensor.outputs)


def _replace_with_constant(graph: gs.Graph, tensor: gs.Variable, values: np.ndarray) -> None:
    producer = tensor.inputs[0]
    if len(producer.outputs) == 1:
        producer.outputs.clear()
    else:
        # The producer may stay (another output of it may be needed); keep its outputs in place.
        slot = next(i for i, out in enumerate(producer.outputs) if out is tensor)
        producer.outputs[slot] = gs.Variable(_unused_name(graph, f"{tensor.name}_unused"))
    if _is_graph_output(graph, tensor):
        tensor.dtype, tensor.shape = values.dtype, list(values.shape)
        graph.nodes.append(gs.Node("Constant", name=producer.name, attrs={"value": gs.Constant("", values)},
                                   outputs=[tensor]))
    else:
        tensor.to_constant(values)


def _unused_name(graph: gs.Graph, base: str) -> str:
    names = graph.tensors().keys()
    name, n = base, 0
    while name in names:
        n += 1
        name = f"{base}_{n}"
    return name


def _evaluate_on_onnxruntime(graph: gs.Graph, tensors: list[gs.Tensor]) -> dict[str, np.ndarray]:
    """Values of ``tensors`` (all computable from constants), from one onnxruntime session."""
    cone: set[int] = set()
    stack = list(tensors)
    while stack:
        tensor = stack.pop()
        for producer in tensor.inputs:
            if id(producer) not in cone:
                cone.add(id(producer))
                stack.extend(producer.inputs)
    part = gs.Graph(nodes=[node for node in graph.nodes if id(node) in cone], outputs=tensors,
                    opset=graph.opset, import_domains=graph.import_domains, ir_version=graph.ir_version)
    return run_oracle(model_io.to_model(part), {})


def _known_nbytes(node: gs.Node, tensor: gs.Tensor) -> int | None:
    """Size of ``tensor`` if it is known before computing it."""
    if node.op == "ConstantOfShape" and isinstance(node.inputs[0], gs.Constant):
        value = node.attrs.get("value")
        shape = node.inputs[0].values.ravel().tolist()
        dtype = value.dtype if isinstance(value, gs.Constant) else np.float32  # the op's default
    else:
        shape, dtype = tensor.shape, tensor.dtype
    if shape is None or dtype is None or not all(_is_fixed(d) for d in shape):
        return None
    return int(np.prod(shape, dtype=np.int64)) * get_itemsize(dtype)


def _too_large(node: gs.Node, tensor: gs.Tensor, size: int, ctx: PassContext) -> str:
    return (f"{node.op} output '{tensor.name}' is {size / 2**20:.1f} MiB, over the fold limit of "
            f"{ctx.fold_limit_bytes / 2**20:.1f} MiB; left to run time")


def _is_fixed(dim: Dim) -> bool:
    return isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim >= 0


def _shape_dims(node: gs.Node | None) -> list[Dim] | None:
    """The dims a ``Shape`` node returns (fixed, symbolic or unknown), if the input's rank is known."""
    if node is None or node.op != "Shape" or node.inputs[0].shape is None:
        return None
    dims = list(node.inputs[0].shape)
    return dims[node.attrs.get("start", 0):node.attrs.get("end", None)]


def _shape_producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Shape" else None


def _fixed_array(dims: list[Dim]) -> np.ndarray | None:
    return np.array(dims, dtype=np.int64) if all(_is_fixed(d) for d in dims) else None


def _shape_of(node: gs.Node, opset: int) -> np.ndarray | None:
    dims = _shape_dims(node)
    return _fixed_array(dims) if dims is not None else None


def _size_of(node: gs.Node, opset: int) -> np.ndarray | None:
    shape = node.inputs[0].shape
    if shape is None or not all(_is_fixed(d) for d in shape):
        return None
    return np.array(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)


def _gathered_dims(node: gs.Node, opset: int) -> np.ndarray | None:
    dims = _shape_dims(_shape_producer(node.inputs[0]))
    indices = node.inputs[1]
    if dims is None or not isinstance(indices, gs.Constant) or node.attrs.get("axis", 0) not in (0, -1):
        return None
    picked = []
    for index in indices.values.ravel().tolist():
        if not -len(dims) <= index < len(dims):
            return None
        picked.append(dims[index])
    values = _fixed_array(picked)
    return values.reshape(indices.shape) if values is not None else None


def _sliced_dims(node: gs.Node, opset: int) -> np.ndarray | None:
    dims = _shape_dims(_shape_producer(node.inputs[0]))
    params = _slice_params(node, opset)
    if dims is None or params is None:
        return None
    starts, ends, axes, steps = params
    if starts is None or ends is None or not len(starts) == len(ends) == len(axes) == len(steps) == 1:
        return None
    if axes[0] not in (0, -1) or steps[0] == 0:
        return None
    # Python's slice clamps starts and ends exactly as ONNX Slice does.
    return _fixed_array(dims[slice(starts[0], ends[0], steps[0])])


def _slice_params(node: gs.Node, opset: int) -> list[list[int] | None] | None:
    """starts, ends, axes, steps of a Slice; None if one of them is not a constant."""
    if opset < 10:
        return [node.attrs.get("starts"), node.attrs.get("ends"), node.attrs.get("axes", [0]), [1]]
    params = []
    for position, default in ((1, None), (2, None), (3, [0]), (4, [1])):
        tensor = node.inputs[position] if position < len(node.inputs) else None
        if tensor is None or tensor.is_empty():
            params.append(default)
        elif isinstance(tensor, gs.Constant):
            params.append(tensor.values.ravel().tolist())
        else:
            return None
    return params
