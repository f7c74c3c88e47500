"""Attention fusion: scaled dot-product attention becomes ``Attention`` (opset ≥ 23), else is reported."""
from __future__ import annotations

import functools

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.passes.fusion.matching import (
    constant_operand, disconnect, is_default_domain, opset, produced_by, rank, sole_reader,
)
from graphopt.passes.pipeline import PassContext, PassReport

ATTENTION_OPSET = 23


class AttentionFusion:
    """Finds ``y = Softmax(MatMul(q, kᵀ)·scale [+ mask]) @ v`` over [batch, heads, seq, dim] tensors.

    Rules:
      1. recognised: ``MatMul(q, kt)`` → optionally ``Mul``/``Div`` by a constant scale (none when
         the exporter scaled q and k beforehand: scale 1) → optionally ``Add`` of a mask →
         ``Softmax`` over the last axis → ``MatMul(·, v)``.
      2. rewritten, at opset ≥ 23 when onnxruntime runs the op (probed once): kt is a
         ``Transpose`` of rank 4 that only this chain reads, so its perm with the last two axes
         swapped gives k; the chain becomes ``Attention(q, k, v[, mask], scale=scale)``, which
         writes y. A mask must have q's sequence length as its second-to-last dim: onnxruntime
         does not broadcast it along that axis (a BERT padding mask [batch, 1, 1, seq] stays).
         Every other recognised chain stays, and a note counts it for the runtime.

    Must not fire (not even counted):
      3. an intermediate is read outside the chain or is a graph output.
      4. Softmax over another axis than the last (before opset 13 its default axis is 1); a
         scale that is not constant.
    Not rewritten (counted in the note): q, k or v not of rank 4; kt not a Transpose read only
    here; a mask of unknown shape or one row broadcast over the queries; the opset below 23
    (never raised silently: ``--opset 23`` does it).
    """

    name = "attention-fusion"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        kept = 0
        for node in list(graph.nodes):
            if node.op == "Softmax" and is_default_domain(node) and node.outputs:
                match = _match(graph, node)
                if match is not None and not self._try_fuse(graph, match, report):
                    kept += 1
        if kept:
            report.notes.append(f"scaled dot-product attention ×{kept} recognised, kept as MatMul/Softmax "
                                f"(Attention needs opset ≥ {ATTENTION_OPSET} and 4-D q, k, v; the model has "
                                f"opset {opset(graph)})")
        return report

    def _try_fuse(self, graph: gs.Graph, match: dict, report: PassReport) -> bool:
        q, kt, v = match["q"], match["kt"], match["v"]
        transpose = produced_by(kt, "Transpose")
        if opset(graph) < ATTENTION_OPSET or not _onnxruntime_runs_attention() or transpose is None \
                or any(rank(t) != 4 for t in (q, kt, v)) or sole_reader(graph, kt) is None:
            return False
        perm = list(transpose.attrs.get("perm", []))
        if len(perm) != 4 or not _mask_fits(match["mask"], q):
            return False
        transpose.attrs["perm"] = [perm[0], perm[1], perm[3], perm[2]]
        k = transpose.outputs[0]
        if k.shape is not None:
            k.shape = [k.shape[0], k.shape[1], k.shape[3], k.shape[2]]
        inputs = [q, k, v] + ([match["mask"]] if match["mask"] is not None else [])
        y = match["y"]
        for node in match["nodes"]:
            disconnect(node)
        graph.nodes.append(gs.Node("Attention", f"{match['name']}/Attention", {"scale": match["scale"]},
                                   inputs=inputs, outputs=[y]))
        report.record("Attention", replacement=y.name, originals=[y.name])
        return True


def _match(graph: gs.Graph, softmax: gs.Node) -> dict | None:
    r = rank(softmax.inputs[0])
    # Before opset 13 the default axis is 1, and Softmax flattens [axis:]: the same as the
    # last axis only when axis is the last one.
    axis = int(softmax.attrs.get("axis", -1 if opset(graph) >= 13 else 1))
    out = sole_reader(graph, softmax.outputs[0], "MatMul")
    if out is None or out.inputs[0] is not softmax.outputs[0]:
        return None
    scores = softmax.inputs[0]
    add = produced_by(scores, "Add")
    if add is None or sole_reader(graph, scores) is not softmax or len(add.inputs) != 2:
        chain = _scaled_scores(graph, scores)
        mask = None
    else:  # the mask may itself be a Mul (BERT's (1 - m)·-10000): try both operands
        a, b = add.inputs
        chain, mask = _scaled_scores(graph, a), b
        if chain is None:
            chain, mask = _scaled_scores(graph, b), a
        if chain is not None:
            chain["nodes"].append(add)
    if chain is None:
        return None
    if r is None:  # the rank of kᵀ's Transpose is the rank of the scores
        transpose = produced_by(chain["kt"], "Transpose")
        r = len(transpose.attrs.get("perm", ())) or None if transpose is not None else None
    if axis != -1 and (r is None or axis % r != r - 1):
        return None
    return {**chain, "v": out.inputs[1], "mask": mask, "nodes": [softmax, out, *chain["nodes"]],
            "y": out.outputs[0], "name": softmax.name or "attention"}


def _scaled_scores(graph: gs.Graph, scores: gs.Tensor) -> dict | None:
    """q, kt, scale and nodes of ``scores = MatMul(q, kt)·scale`` (the scale optional)."""
    nodes, scale = [], 1.0
    scaling = produced_by(scores, ("Mul", "Div"))
    if scaling is not None and sole_reader(graph, scores) is not None:
        operand = constant_operand(scaling)
        if operand is None or operand[1].size != 1 or (scaling.op == "Div" and scaling.inputs[0] is not operand[0]):
            return None
        value = float(np.ravel(operand[1])[0])
        scale = value if scaling.op == "Mul" else 1.0 / value
        scores = operand[0]
        nodes.append(scaling)
    qk = produced_by(scores, "MatMul")
    if qk is None or sole_reader(graph, scores) is None:
        return None
    return {"q": qk.inputs[0], "kt": qk.inputs[1], "scale": scale, "nodes": [*nodes, qk]}


def _mask_fits(mask: gs.Tensor | None, q: gs.Tensor) -> bool:
    """onnxruntime broadcasts a mask over batch and heads but not over the query axis."""
    if mask is None:
        return True
    if mask.shape is None or len(mask.shape) < 2 or q.shape is None:
        return False
    rows, seq = mask.shape[-2], q.shape[2]
    return isinstance(rows, (int, str)) and rows == seq


@functools.cache
def _onnxruntime_runs_attention() -> bool:
    """Whether this onnxruntime runs the standard Attention op (opset 23) on CPU."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 1, 2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Attention", ["q", "q", "q"], ["y"])], "probe", [q], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ATTENTION_OPSET)], ir_version=10)
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        session.run(None, {"q": np.zeros((1, 1, 2, 4), np.float32)})
    except Exception:  # onnxruntime raises its own types for an op it lacks
        return False
    return True
