"""LayerNorm fusion: the decomposed mean/variance chain becomes ``LayerNormalization`` (opset ≥ 17)."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.passes.fusion.matching import (
    Namer, constant, constant_operand, disconnect, int_attr_or_input, is_default_domain, is_scalar, opset,
    other_input, rank, scalar, sole_reader,
)
from graphopt.passes.pipeline import PassContext, PassReport

LAYER_NORM_OPSET = 17


class LayerNormFusion:
    """Replaces ``y = (x - mean(x)) / sqrt(mean((x - mean(x))²) + eps) · gamma + beta``, the means
    over the last k axes, with ``y = LayerNormalization(x, gamma, beta, axis=-k, epsilon=eps)``.

    Rules:
      1. ``m = ReduceMean(x)``, ``d = Sub(x, m)``, ``v = ReduceMean(Pow(d, 2))`` (or ``Mul(d, d)``),
         ``n = Div(d, Sqrt(Add(v, eps)))``, then optionally ``Mul(n, gamma)`` and ``Add(·, beta)``:
         both ReduceMeans keep dims and reduce the same last k axes (attribute or, from opset 18,
         input); eps, gamma and beta are constants.
      2. gamma and beta are broadcast to the normalized shape (LayerNormalization wants exactly
         that shape); without gamma the scale is ones, without beta there is no bias. The
         normalized shape is x's last k dims when fixed; when x's shape is unknown (negative
         axes still say which), a gamma or beta spanning all k axes with no dim of 1 gives it.

    Must not fire:
      3. opset below 17, or the normalized shape unknown: the chain stays and a note counts it
         (the opset is never raised silently).
      4. the axes are not the trailing ones, keepdims is 0, or the two means reduce different axes.
      5. a tensor inside the chain (m, d, the square, v, ...) is read outside it or is a graph
         output; d has exactly two readers, the square and the Div.
      6. gamma or beta is not constant or would broadcast over the non-normalized axes (it stays
         outside, as a Mul or Add after the LayerNormalization).
    """

    name = "layernorm-fusion"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        names = Namer(graph)
        left = 0
        for node in list(graph.nodes):
            if node.op == "ReduceMean" and is_default_domain(node) and node.outputs:
                match = _match(graph, node)
                if match is not None and not self._try_fuse(graph, node, match, names, report):
                    left += 1
        if left:
            report.notes.append(f"LayerNorm ×{left} left decomposed: LayerNormalization needs opset ≥ "
                                f"{LAYER_NORM_OPSET} (the model has {opset(graph)}; --opset {LAYER_NORM_OPSET} "
                                "upgrades it) and a known normalized shape")
        return report

    def _try_fuse(self, graph: gs.Graph, mean: gs.Node, match: dict, names: Namer, report: PassReport) -> bool:
        if opset(graph) < LAYER_NORM_OPSET or match["normalized"] is None:
            return False
        x, y, k, normalized = mean.inputs[0], match["y"], match["k"], match["normalized"]
        dtype = match["dtype"]
        gamma = _over(match["gamma"], normalized) if match["gamma"] is not None else np.ones(normalized)
        inputs = [x, names.constant(f"{y.name}/scale", gamma.astype(dtype))]
        if match["beta"] is not None:
            inputs.append(names.constant(f"{y.name}/bias", _over(match["beta"], normalized).astype(dtype)))
        for node in match["nodes"]:
            disconnect(node)
        graph.nodes.append(gs.Node("LayerNormalization", f"{mean.name}/LayerNormalization",
                                   {"axis": -k, "epsilon": match["eps"]}, inputs=inputs, outputs=[y]))
        report.record("LayerNormalization", replacement=y.name, originals=[y.name])
        return True


def _trailing_axes(node: gs.Node, r: int | None) -> int | None:
    """k when ``node`` is a keepdims ReduceMean over the last k axes (of a rank-r tensor, when
    the axes are not all negative)."""
    if node.attrs.get("keepdims", 1) != 1:
        return None
    axes = int_attr_or_input(node, "axes", 1)
    if not axes:
        return None
    if r is None:
        if any(a >= 0 for a in axes):
            return None
        r = -min(axes)
    axes = sorted(a % r for a in axes)
    return len(axes) if axes == list(range(r - len(axes), r)) else None


def _match(graph: gs.Graph, mean: gs.Node) -> dict | None:
    x = mean.inputs[0]
    r = rank(x)
    k = _trailing_axes(mean, r)
    if k is None:
        return None
    sub = sole_reader(graph, mean.outputs[0], "Sub")
    if sub is None or sub.inputs[0] is not x:
        return None
    d = sub.outputs[0]
    readers = list({id(n): n for n in d.outputs}.values())  # Mul(d, d) lists its node twice
    if len(readers) != 2 or any(o is d for o in graph.outputs):
        return None
    square = next((n for n in readers if n.op == "Pow" and n.inputs[0] is d and is_scalar(n.inputs[1], 2.0)), None) \
        or next((n for n in readers if n.op == "Mul" and all(t is d for t in n.inputs)), None)
    div = next((n for n in readers if n.op == "Div" and n.inputs[0] is d), None)
    if square is None or div is None:
        return None
    var = sole_reader(graph, square.outputs[0], "ReduceMean")
    if var is None or _trailing_axes(var, r) != k or sorted(int_attr_or_input(var, "axes", 1) or []) != \
            sorted(int_attr_or_input(mean, "axes", 1) or []):
        return None
    add = sole_reader(graph, var.outputs[0], "Add")
    eps = scalar(other_input(add, var.outputs[0])) if add is not None else None
    sqrt = sole_reader(graph, add.outputs[0], "Sqrt") if eps is not None else None
    if sqrt is None or sole_reader(graph, sqrt.outputs[0]) is not div or div.inputs[1] is not sqrt.outputs[0]:
        return None
    nodes = [mean, sub, square, var, add, sqrt, div]
    y, gamma, beta = div.outputs[0], None, None
    mul = sole_reader(graph, y, "Mul")
    normalized = _normalized_shape(x, k, [constant(other_input(n, y)) for n in (mul, sole_reader(graph, y, "Add"))
                                          if n is not None])
    if mul is not None and normalized is not None and _is_affine_operand(mul, y, normalized):
        gamma, y = constant(other_input(mul, y)), mul.outputs[0]
        nodes.append(mul)
    add_beta = sole_reader(graph, y, "Add")
    if add_beta is not None and normalized is not None and _is_affine_operand(add_beta, y, normalized):
        beta, y = constant(other_input(add_beta, y)), add_beta.outputs[0]
        nodes.append(add_beta)
    dtype = gamma.dtype if gamma is not None else beta.dtype if beta is not None else np.float32
    return {"y": y, "k": k, "eps": float(eps), "gamma": gamma, "beta": beta, "nodes": nodes, "dtype": dtype,
            "normalized": normalized}


def _normalized_shape(x: gs.Tensor, k: int, affine: list[np.ndarray | None]) -> tuple[int, ...] | None:
    """The fixed dims of x's last k axes; when x's shape is unknown, the shape of a gamma or beta
    that spans all k axes with no broadcast dim (so it cannot enlarge x); else None."""
    if x.shape is not None and all(isinstance(d, int) for d in x.shape[-k:]):
        return tuple(x.shape[-k:])
    for value in affine:
        if value is not None and value.ndim >= k and all(d > 1 for d in value.shape[-k:]):
            return tuple(value.shape[-k:])
    return None


def _is_affine_operand(node: gs.Node, tensor: gs.Tensor, normalized: tuple[int, ...]) -> bool:
    operand = constant_operand(node)
    if operand is None or operand[0] is not tensor:
        return False
    shape, k = operand[1].shape, len(normalized)
    # Leading dims of 1 only: a gamma that varies along a batch axis is not a LayerNorm scale.
    if any(d != 1 for d in shape[:max(0, len(shape) - k)]):
        return False
    return all(d in (1, n) for d, n in zip(shape[::-1], normalized[::-1]))


def _over(value: np.ndarray, normalized: tuple[int, ...]) -> np.ndarray:
    """``value`` broadcast to exactly the normalized shape (its leading 1-dims dropped)."""
    trailing = value.reshape(value.shape[max(0, value.ndim - len(normalized)):])
    return np.broadcast_to(trailing, normalized)
