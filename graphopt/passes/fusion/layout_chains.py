"""Layout chains: consecutive Transposes, and Reshape/Squeeze/Unsqueeze/Flatten runs, collapsed."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.passes.fusion.matching import Namer, disconnect, is_default_domain, produced_by, sole_reader
from graphopt.passes.pipeline import PassContext, PassReport

RESHAPES = ("Reshape", "Squeeze", "Unsqueeze", "Flatten")


class LayoutChainCollapse:
    """Collapses chains of layout-only nodes into one node, or none.

    Rules:
      1. ``Transpose(Transpose(x, p1), p2)`` → ``Transpose(x, p1∘p2)``; when the composition is
         the identity, both go and the readers read x (a cancelling pair).
      2. ``b(a(x))`` with a and b each a Reshape, Squeeze, Unsqueeze or Flatten → one
         ``Reshape(x, target)`` when b's output shape is known: each output dim is a fixed number,
         or 0 (copy) where it is the same symbolic dim at the same position of x, or -1 for at
         most one other symbolic dim. A chain of more nodes collapses one link at a time.
      3. When that Reshape maps x to its own shape, it goes too (readers read x).

    Must not fire:
      4. the tensor between the two nodes has another reader or is a graph output.
      5. rule 2 when b's output shape is unknown, or has two symbolic dims that are not copies of
         x's dims at the same position.
      6. rules 1 and 3 remove the last node only if its output is not a graph output (then it
         stays as one node, which noop-elimination may still rename away).
    """

    name = "layout-chain-collapse"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        names = Namer(graph)
        for node in list(graph.nodes):
            if not is_default_domain(node) or not node.outputs or not node.inputs:
                continue
            if node.op == "Transpose":
                self._try_transpose_pair(graph, node, report)
            elif node.op in RESHAPES and graph.opset >= 5:  # Reshape takes its shape as an input from 5
                self._try_reshape_pair(graph, node, names, report)
        return report

    def _try_transpose_pair(self, graph: gs.Graph, second: gs.Node, report: PassReport) -> bool:
        first = produced_by(second.inputs[0], "Transpose")
        if first is None or sole_reader(graph, first.outputs[0]) is not second:
            return False
        p1, p2 = first.attrs.get("perm"), second.attrs.get("perm")
        if p1 is None or p2 is None or len(p1) != len(p2):
            return False
        perm = [int(p1[i]) for i in p2]
        x, y = first.inputs[0], second.outputs[0]
        disconnect(first)
        second.inputs[0] = x
        second.attrs["perm"] = perm
        if perm == list(range(len(perm))) and _bypass(graph, second, x):
            report.record("Transpose pair cancelled", replacement=x.name, originals=[y.name])
        else:
            report.record("Transpose+Transpose")
        return True

    def _try_reshape_pair(self, graph: gs.Graph, second: gs.Node, names: Namer, report: PassReport) -> bool:
        first = produced_by(second.inputs[0], RESHAPES)
        if first is None or sole_reader(graph, first.outputs[0]) is not second:
            return False
        x, y = first.inputs[0], second.outputs[0]
        target = _reshape_target(x.shape, y.shape)
        if target is None:
            return False
        rule = f"{first.op}+{second.op}"
        disconnect(first)
        if x.shape is not None and list(x.shape) == list(y.shape) and _bypass(graph, second, x):
            report.record(f"{rule} cancelled", replacement=x.name, originals=[y.name])
            return True
        shape = names.constant(f"{y.name}/shape", np.array(target, dtype=np.int64))
        second.op, second.attrs = "Reshape", {}
        second.inputs.clear()
        second.inputs.extend([x, shape])
        report.record(rule)
        return True


def _reshape_target(src: list | None, dst: list | None) -> list[int] | None:
    if src is None or dst is None:
        return None
    target, unknown = [], 0
    for i, dim in enumerate(dst):
        if isinstance(dim, (int, np.integer)) and dim >= 0:
            if dim == 0:
                return None  # 0 means "copy" to Reshape; an empty dim would need allowzero
            target.append(int(dim))
        elif isinstance(dim, str) and i < len(src) and src[i] == dim:
            target.append(0)
        else:
            unknown += 1
            target.append(-1)
    return target if unknown <= 1 else None


def _bypass(graph: gs.Graph, node: gs.Node, x: gs.Tensor) -> bool:
    """Readers of ``node``'s output read ``x`` instead, unless that output is a graph output."""
    y = node.outputs[0]
    if any(out is y for out in graph.outputs):
        return False
    for reader in list(y.outputs):
        for i, tensor in enumerate(reader.inputs):
            if tensor is y:
                reader.inputs[i] = x
    disconnect(node)
    return True
