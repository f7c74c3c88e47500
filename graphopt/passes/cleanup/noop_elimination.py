"""No-op elimination: nodes whose output always equals their input are bypassed."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import dtype_to_onnx

from graphopt import model_io
from graphopt.passes.pipeline import PassContext, PassReport

# gs leaves a node's domain None when the file does not set it.
DEFAULT_DOMAINS = (None, *model_io.DEFAULT_DOMAINS)

Dim = int | str | None


class NoOpElimination:
    """Removes nodes ``y = op(x, ...)`` whose output ``y`` always equals their data input ``x``;
    the readers of ``y`` read ``x`` instead. Runs in the main graph and in subgraphs.

    Rules (the node is a no-op when):
      1. Identity.
      2. Dropout in inference: its mask output is absent or unused (no reader, not a graph
         output), and ``training_mode`` is absent or a constant false (opset 12+); before
         opset 7, only with ``is_test=1``.
      3. Reshape to x's own shape: the target is a constant of x's rank with at most one -1,
         every other entry 0 (copy the dim; not with ``allowzero=1``) or equal to x's fixed dim
         there, so symbolic dims are fine; or x and y have the same fully fixed shape.
      4. Transpose with the identity ``perm`` (or no ``perm`` on a rank 0 or 1 input).
      5. Cast to x's own dtype; CastLike to a tensor of x's own dtype.
      6. Expand by a constant shape that broadcasts to x's own shape (no longer than x's rank,
         each entry 1 or x's fixed dim).
      7. Flatten of a rank-2 input at axis 1 (or -1).

    Names:
      8. If y is a graph output, x takes y's name (the graph output keeps the name users see)
         and provenance says y now also stands for x's old name; otherwise x stands for y.

    Must not fire:
      9. x is a graph input and y a graph output: the graph would output its input under
         another name. The node stays.
     10. y is a graph output and x cannot take its name: x is a Constant, a graph output itself,
         or not produced in this graph (a graph input, an outer-scope value in a subgraph).
     11. a check above needs a dtype, shape or value that is unknown.
     12. the op is outside the default ONNX domain.
    """

    name = "noop-elimination"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        for g in (graph, *graph.subgraphs(recursive=True)):
            for node in list(g.nodes):
                self._try_remove(g, node, graph.opset, report)
        return report

    def _try_remove(self, graph: gs.Graph, node: gs.Node, opset: int, report: PassReport) -> bool:
        if node.domain not in DEFAULT_DOMAINS or not node.inputs or not node.outputs:
            return False
        x, y = node.inputs[0], node.outputs[0]
        if x.is_empty() or y.is_empty() or not _is_noop(node, opset, graph):
            return False
        if _is_output(graph, y):
            return self._try_bypass_into_output(graph, node, x, y, report)
        _read_instead(y, x)
        _disconnect(node)
        report.record(node.op, replacement=x.name, originals=[y.name])
        return True

    def _try_bypass_into_output(self, graph: gs.Graph, node: gs.Node, x: gs.Tensor, y: gs.Tensor,
                                report: PassReport) -> bool:
        local = {id(n) for n in graph.nodes}
        producer_here = isinstance(x, gs.Variable) and len(x.inputs) == 1 and id(x.inputs[0]) in local
        if not producer_here or _is_output(graph, x):
            return False
        old_name = x.name
        _read_instead(y, x)
        _disconnect(node)
        graph.outputs[next(i for i, out in enumerate(graph.outputs) if out is y)] = x
        x.name = y.name
        x.dtype = x.dtype if x.dtype is not None else y.dtype
        x.shape = x.shape if x.shape is not None else y.shape
        report.record(node.op, replacement=x.name, originals=[old_name])
        return True


def _is_noop(node: gs.Node, opset: int, graph: gs.Graph) -> bool:
    check = {
        "Identity": lambda: True,
        "Dropout": lambda: _dropout_is_noop(node, opset, graph),
        "Reshape": lambda: _reshape_is_noop(node),
        "Transpose": lambda: _transpose_is_noop(node),
        "Cast": lambda: _dtype(node.inputs[0]) is not None and _dtype(node.inputs[0]) == node.attrs.get("to"),
        "CastLike": lambda: _dtype(node.inputs[0]) is not None and _dtype(node.inputs[0]) == _dtype(node.inputs[1]),
        "Expand": lambda: _expand_is_noop(node),
        "Flatten": lambda: _rank(node.inputs[0]) == 2 and node.attrs.get("axis", 1) in (1, -1),
    }.get(node.op)
    return check is not None and check()


def _dropout_is_noop(node: gs.Node, opset: int, graph: gs.Graph) -> bool:
    if len(node.outputs) > 1 and not node.outputs[1].is_empty():
        mask = node.outputs[1]
        if mask.outputs or _is_output(graph, mask):
            return False
    if opset < 7:
        return node.attrs.get("is_test", 0) == 1
    if len(node.inputs) > 2 and not node.inputs[2].is_empty():
        training_mode = node.inputs[2]
        return isinstance(training_mode, gs.Constant) and not np.any(training_mode.values)
    return True


def _reshape_is_noop(node: gs.Node) -> bool:
    x, y = node.inputs[0], node.outputs[0]
    if _all_fixed(x.shape) and _all_fixed(y.shape) and list(x.shape) == list(y.shape):
        return True
    target = _constant_ints(node.inputs[1]) if len(node.inputs) > 1 else node.attrs.get("shape")
    if x.shape is None or target is None or len(target) != len(x.shape) or target.count(-1) > 1:
        return False
    if -1 in target and any(d == 0 for d in x.shape if _is_fixed(d)):
        return False  # -1 next to a zero-sized dim is ambiguous
    allow_zero = node.attrs.get("allowzero", 0) == 1
    return all(t == -1 or (t == 0 and not allow_zero) or (_is_fixed(d) and d == t)
               for t, d in zip(target, x.shape))


def _transpose_is_noop(node: gs.Node) -> bool:
    perm = node.attrs.get("perm")
    if perm is None:
        rank = _rank(node.inputs[0])
        return rank is not None and rank <= 1
    return list(perm) == list(range(len(perm)))


def _expand_is_noop(node: gs.Node) -> bool:
    x = node.inputs[0]
    target = _constant_ints(node.inputs[1])
    if x.shape is None or target is None or len(target) > len(x.shape):
        return False
    aligned = list(x.shape)[len(x.shape) - len(target):]
    return all(t == 1 or (_is_fixed(d) and d == t) for t, d in zip(target, aligned))


def _read_instead(old: gs.Tensor, new: gs.Tensor) -> None:
    """Every reader of ``old`` (in this graph or a subgraph) reads ``new``."""
    for reader in list(old.outputs):
        for i, tensor in enumerate(reader.inputs):
            if tensor is old:
                reader.inputs[i] = new


def _disconnect(node: gs.Node) -> None:
    node.inputs.clear()
    node.outputs.clear()


def _is_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(out is tensor for out in graph.outputs)


def _dtype(tensor: gs.Tensor) -> int | None:
    dtype = tensor.export_dtype if isinstance(tensor, gs.Constant) else tensor.dtype
    return dtype_to_onnx(dtype) if dtype is not None else None


def _rank(tensor: gs.Tensor) -> int | None:
    return len(tensor.shape) if tensor.shape is not None else None


def _constant_ints(tensor: gs.Tensor) -> list[int] | None:
    return tensor.values.ravel().tolist() if isinstance(tensor, gs.Constant) else None


def _is_fixed(dim: Dim) -> bool:
    return isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim >= 0


def _all_fixed(shape: list[Dim] | None) -> bool:
    return shape is not None and all(_is_fixed(d) for d in shape)
