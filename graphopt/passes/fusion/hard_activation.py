"""Hard activations: ``clip(x+3, 0, 6)/6`` becomes ``HardSigmoid``, ``x·HardSigmoid(x)`` ``HardSwish``."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt.passes.fusion.matching import (
    Namer, constant_operand, disconnect, is_default_domain, is_scalar, opset, other_input, produced_by, scalar,
    sole_reader,
)
from graphopt.passes.pipeline import PassContext, PassReport

HARD_SWISH_OPSET = 14
SIXTH = 1.0 / 6.0


class HardActivationFusion:
    """Rewrites the decompositions of HardSigmoid and HardSwish that exporters write.

    Rules:
      1. ``h = Clip(Add(x, 3), 0, 6)`` then ``Div(h, 6)`` or ``Mul(h, 1/6)`` →
         ``HardSigmoid(x, alpha=1/6, beta=0.5)`` (Clip bounds as attributes before opset 11,
         constant inputs after).
      2. ``Mul(x, Clip(Add(x, 3), 0, 6))`` then ``Div(·, 6)`` (or ``Mul(·, 1/6)``) →
         ``HardSwish(x)``; below opset 14 → ``Mul(x, HardSigmoid(x))``.
      3. ``Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5))`` → ``HardSwish(x)`` (opset ≥ 14).
      4. SiLU ``Mul(x, Sigmoid(x))`` has no standard ONNX op: it is left as it is, recognisable by
         the runtime, and a note counts it.

    Must not fire:
      5. a tensor inside the chain is read outside it or is a graph output.
      6. other constants (e.g. Paddle's ``HardSigmoid(alpha=0.2)`` is not HardSwish's gate), or
         a Mul whose other operand is not the same x.
      7. rule 3 below opset 14 (the opset is never raised silently).
    """

    name = "hard-activation-fusion"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        names = Namer(graph)
        for node in list(graph.nodes):
            if node.op == "Clip" and is_default_domain(node) and node.outputs:
                self._try_fuse_clip(graph, node, names, report)
        for node in list(graph.nodes):
            if node.op == "HardSigmoid" and is_default_domain(node) and node.outputs:
                self._try_hard_swish(graph, node, report)
        silu = sum(1 for node in graph.nodes if node.op == "Sigmoid" and _is_gate_of_own_input(graph, node))
        if silu:
            report.notes.append(f"SiLU x·Sigmoid(x) ×{silu} kept (no standard ONNX op)")
        return report

    def _try_fuse_clip(self, graph: gs.Graph, clip: gs.Node, names: Namer, report: PassReport) -> bool:
        add = produced_by(clip.inputs[0], "Add")
        if add is None or sole_reader(graph, add.outputs[0]) is not clip or not _bounds_are(clip, 0.0, 6.0):
            return False
        operand = constant_operand(add)
        if operand is None or not is_scalar(other_input(add, operand[0]), 3.0):
            return False
        x, h = operand[0], clip.outputs[0]
        reader = sole_reader(graph, h, ("Div", "Mul"))
        if reader is None:
            return False
        if _is_sixth(reader, h):
            self._replace(graph, [add, clip, reader], "HardSigmoid", x, reader.outputs[0], report, names)
            return True
        if reader.op != "Mul" or other_input(reader, h) is not x:
            return False
        scale = sole_reader(graph, reader.outputs[0], ("Div", "Mul"))
        if scale is None or not _is_sixth(scale, reader.outputs[0]):
            return False
        self._replace(graph, [add, clip, reader, scale], "HardSwish", x, scale.outputs[0], report, names)
        return True

    def _try_hard_swish(self, graph: gs.Graph, gate: gs.Node, report: PassReport) -> bool:
        if opset(graph) < HARD_SWISH_OPSET or not _is_hard_swish_gate(gate):
            return False
        mul = sole_reader(graph, gate.outputs[0], "Mul")
        x = gate.inputs[0]
        if mul is None or other_input(mul, gate.outputs[0]) is not x:
            return False
        y = mul.outputs[0]
        disconnect(gate)
        disconnect(mul)
        graph.nodes.append(gs.Node("HardSwish", f"{gate.name}/HardSwish", inputs=[x], outputs=[y]))
        report.record("HardSigmoid+Mul→HardSwish", replacement=y.name, originals=[y.name])
        return True

    def _replace(self, graph: gs.Graph, nodes: list[gs.Node], op: str, x: gs.Tensor, y: gs.Tensor,
                 report: PassReport, names: Namer) -> None:
        for node in nodes:
            disconnect(node)
        base = nodes[1].name
        if op == "HardSigmoid" or opset(graph) >= HARD_SWISH_OPSET:
            attrs = {"alpha": SIXTH, "beta": 0.5} if op == "HardSigmoid" else {}
            graph.nodes.append(gs.Node(op, f"{base}/{op}", attrs, inputs=[x], outputs=[y]))
            report.record(op, replacement=y.name, originals=[y.name])
            return
        gate = names.variable(f"{y.name}/gate", y)
        graph.nodes += [gs.Node("HardSigmoid", f"{base}/HardSigmoid", {"alpha": SIXTH, "beta": 0.5},
                                inputs=[x], outputs=[gate]),
                        gs.Node("Mul", f"{base}/Mul", inputs=[x, gate], outputs=[y])]
        report.record("x·HardSigmoid(x)", replacement=y.name, originals=[y.name])


def _bounds_are(clip: gs.Node, low: float, high: float) -> bool:
    if "min" in clip.attrs or "max" in clip.attrs:
        return clip.attrs.get("min") == low and clip.attrs.get("max") == high
    if len(clip.inputs) != 3:
        return False
    return scalar(clip.inputs[1]) == low and scalar(clip.inputs[2]) == high


def _is_sixth(node: gs.Node, tensor: gs.Tensor) -> bool:
    """``node`` divides ``tensor`` by 6 or multiplies it by 1/6."""
    if node.op == "Div":
        return node.inputs[0] is tensor and is_scalar(node.inputs[1], 6.0)
    return is_scalar(other_input(node, tensor), SIXTH)


def _is_hard_swish_gate(node: gs.Node) -> bool:
    return abs(node.attrs.get("alpha", 0.2) - SIXTH) < 1e-6 and abs(node.attrs.get("beta", 0.5) - 0.5) < 1e-6


def _is_gate_of_own_input(graph: gs.Graph, sigmoid: gs.Node) -> bool:
    x = sigmoid.inputs[0]
    return any(reader.op == "Mul" and other_input(reader, sigmoid.outputs[0]) is x
               for reader in sigmoid.outputs[0].outputs)
