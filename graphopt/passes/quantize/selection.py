"""Which nodes a quantization pass may rewrite, and the user's ``exclude`` / ``keep_fp32`` choices."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.errors import PassError

# Positions in ``keep_fp32`` that name the first / last quantizable node rather than a node name.
POSITIONS = ("first", "last")


def weight_axis(node: gs.Node) -> int | None:
    """The output-channel axis of ``node``'s weight if the node is quantizable, else None.

    Quantizable: a float activation as input 0 and a constant float weight as input 1 — Conv
    (weight ``[Cout, Cin/group, k...]``, axis 0), Gemm with alpha = beta = 1 (axis 0 with transB,
    else 1), MatMul with a 2-D weight ``[K, N]`` (axis 1).
    """
    if node.op not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
        return None
    x, weight = node.inputs[0], node.inputs[1]
    if not isinstance(x, gs.Variable) or not isinstance(weight, gs.Constant):
        return None
    if x.dtype is not None and np.dtype(x.dtype) != np.float32:
        return None
    values = weight.values
    if values.dtype != np.float32:
        return None
    if node.op == "Conv":
        return 0 if values.ndim >= 3 else None
    if values.ndim != 2:
        return None
    if node.op == "Gemm":
        if node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0:
            return None
        return 0 if node.attrs.get("transB", 0) else 1
    return 1


def select_nodes(graph: gs.Graph, ops: tuple[str, ...], exclude=(), keep_fp32=()) -> list[gs.Node]:
    """Quantizable nodes of type ``ops`` in graph order, less those the user keeps in fp32.

    ``exclude`` holds node names or op types; ``keep_fp32`` node names or ``first`` / ``last``
    (the first / last quantizable node). A name that is neither a node of the graph nor an ONNX op
    type is a PassError: it is most likely a typo, and silently quantizing the layer the user
    meant to protect is worse. (An ONNX op type the graph lacks is fine: ``--exclude MatMul``.)
    """
    _check_names(graph, exclude, keep_fp32)
    candidates = [n for n in graph.nodes if n.op in ops and weight_axis(n) is not None]
    kept = set(exclude) | set(keep_fp32)
    if candidates and "first" in kept:
        kept.add(candidates[0].name)
    if candidates and "last" in kept:
        kept.add(candidates[-1].name)
    return [n for n in candidates if n.name not in kept and n.op not in kept]


def _check_names(graph: gs.Graph, exclude, keep_fp32) -> None:
    node_names = {n.name for n in graph.nodes}
    op_types = {n.op for n in graph.nodes}
    unknown = [name for name in exclude if name not in node_names and name not in op_types
               and not onnx.defs.has(name)]
    unknown += [name for name in keep_fp32 if name not in node_names and name not in POSITIONS]
    if unknown:
        examples = ", ".join(sorted(node_names - {""})[:5])
        raise PassError(f"quantize: no node or op type named {', '.join(map(repr, unknown))}",
                        f"--exclude takes node names or op types, --keep-fp32 node names or first/last; "
                        f"some node names: {examples}")
