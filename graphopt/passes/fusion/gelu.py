"""GELU fusion: the erf and tanh decompositions of GELU become one ``Gelu`` node (opset ≥ 20)."""
from __future__ import annotations

import math

import onnx_graphsurgeon as gs

from graphopt.passes.fusion.matching import (
    constant_operand, disconnect, is_default_domain, is_scalar, opset, other_input, produced_by, sole_reader,
)
from graphopt.passes.pipeline import PassContext, PassReport

GELU_OPSET = 20


class GeluFusion:
    """Replaces a decomposed GELU with ``y = Gelu(x)``. The chain is matched from its Erf/Tanh.

    Rules:
      1. erf form: ``e = Erf(Div(x, √2))`` (or ``Mul(x, 1/√2)``), ``a = Add(e, 1)``, and y the
         product of x, a and 0.5 in any grouping (``x·a·0.5``, ``x·(a·0.5)``, ``(x·0.5)·a``)
         → ``Gelu(x)``.
      2. tanh form: ``e = Tanh(Mul(Add(x, Mul(x³, 0.044715)), √(2/π)))``, x³ as ``Pow(x, 3)``
         or ``x·x·x``, then the same tail → ``Gelu(x, approximate="tanh")``.
      3. Constants match within 1e-4 relative (exporters round √2 and √(2/π) differently).

    Must not fire:
      4. the model's opset is below 20: the pattern stays (the opset is never raised silently;
         ``--opset 20`` does it) and a note counts the matches.
      5. a tensor inside the chain has a reader outside it or is a graph output (y may be one).
      6. a constant differs (e.g. ``x·Sigmoid(1.702·x)`` is another approximation).
    """

    name = "gelu-fusion"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        left = 0
        for node in list(graph.nodes):
            if node.op in ("Erf", "Tanh") and is_default_domain(node) and node.outputs:
                match = _match(graph, node)
                if match is not None and not self._try_fuse(graph, node, *match, report):
                    left += 1
        if left:
            report.notes.append(f"GELU ×{left} left decomposed: Gelu needs opset ≥ {GELU_OPSET}, the model has "
                                f"{opset(graph)} (--opset {GELU_OPSET} upgrades it)")
        return report

    def _try_fuse(self, graph: gs.Graph, core: gs.Node, x: gs.Tensor, y: gs.Tensor, nodes: list[gs.Node],
                  report: PassReport) -> bool:
        if opset(graph) < GELU_OPSET:
            return False
        attrs = {"approximate": "tanh"} if core.op == "Tanh" else {}
        for node in nodes:
            disconnect(node)
        graph.nodes.append(gs.Node("Gelu", f"{core.name}/Gelu", attrs, inputs=[x], outputs=[y]))
        report.record("Gelu(tanh)" if core.op == "Tanh" else "Gelu", replacement=y.name, originals=[y.name])
        return True


def _match(graph: gs.Graph, core: gs.Node) -> tuple[gs.Tensor, gs.Tensor, list[gs.Node]] | None:
    """(x, y, the chain's nodes) of a GELU whose Erf/Tanh is ``core``, or None."""
    head = _erf_head(graph, core) if core.op == "Erf" else _tanh_head(graph, core)
    if head is None:
        return None
    x, head_nodes = head
    add = sole_reader(graph, core.outputs[0], "Add")
    if add is None or not is_scalar(other_input(add, core.outputs[0]), 1.0):
        return None
    tail = _half_x_product(graph, add.outputs[0], x)
    if tail is None:
        return None
    y, tail_nodes = tail
    return x, y, [*head_nodes, core, add, *tail_nodes]


def _erf_head(graph: gs.Graph, core: gs.Node):
    scale = produced_by(core.inputs[0], ("Div", "Mul"))
    if scale is None or sole_reader(graph, scale.outputs[0]) is not core:
        return None
    operand = constant_operand(scale)
    if operand is None or (scale.op == "Div" and scale.inputs[0] is not operand[0]):
        return None
    factor = math.sqrt(2.0) if scale.op == "Div" else math.sqrt(0.5)
    return (operand[0], [scale]) if is_scalar(scale.inputs[1 if scale.inputs[0] is operand[0] else 0], factor) \
        else None


def _tanh_head(graph: gs.Graph, core: gs.Node):
    scale = produced_by(core.inputs[0], "Mul")
    if scale is None or sole_reader(graph, scale.outputs[0]) is not core:
        return None
    operand = constant_operand(scale)
    if operand is None or not is_scalar(other_input(scale, operand[0]), math.sqrt(2.0 / math.pi)):
        return None
    inner = produced_by(operand[0], "Add")
    if inner is None or sole_reader(graph, inner.outputs[0]) is not scale or len(inner.inputs) != 2:
        return None
    for x, cubic in (inner.inputs, inner.inputs[::-1]):
        scaled = produced_by(cubic, "Mul")
        if scaled is None or sole_reader(graph, cubic) is not inner:
            continue
        coeff = constant_operand(scaled)
        if coeff is None or not is_scalar(other_input(scaled, coeff[0]), 0.044715):
            continue
        cube = _cube_of(graph, coeff[0], x)
        if cube is not None:
            return x, [*cube, scaled, inner, scale]
    return None


def _cube_of(graph: gs.Graph, tensor: gs.Tensor, x: gs.Tensor) -> list[gs.Node] | None:
    """The nodes computing ``tensor = x³`` (``Pow(x, 3)`` or two Muls), read only by the chain."""
    if len(tensor.outputs) != 1:
        return None
    pow_ = produced_by(tensor, "Pow")
    if pow_ is not None:
        return [pow_] if pow_.inputs[0] is x and is_scalar(pow_.inputs[1], 3.0) else None
    outer = produced_by(tensor, "Mul")
    if outer is None:
        return None
    square = other_input(outer, x)
    inner = produced_by(square, "Mul") if square is not None else None
    if inner is None or len(square.outputs) != 1 or len(inner.inputs) != 2 or not all(t is x for t in inner.inputs):
        return None
    return [inner, outer]


def _half_x_product(graph: gs.Graph, a: gs.Tensor, x: gs.Tensor) -> tuple[gs.Tensor, list[gs.Node]] | None:
    """(y, nodes) where y = x·a·0.5 in any grouping of two Muls, each intermediate read once."""
    first = sole_reader(graph, a, "Mul")
    if first is None:
        return None
    other = other_input(first, a)
    if other is x or is_scalar(other, 0.5):
        second = sole_reader(graph, first.outputs[0], "Mul")
        if second is None:
            return None
        last = other_input(second, first.outputs[0])
        if (other is x and is_scalar(last, 0.5)) or (other is not x and last is x):
            return second.outputs[0], [first, second]
        return None
    half = produced_by(other, "Mul") if other is not None else None
    if half is None or sole_reader(graph, other) is not first or not is_scalar(other_input(half, x), 0.5):
        return None
    return first.outputs[0], [half, first]
