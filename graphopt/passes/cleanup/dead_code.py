"""Dead-code elimination: nodes and constants that no graph output depends on are removed."""
from __future__ import annotations

from collections.abc import Iterator

import onnx_graphsurgeon as gs

from graphopt.passes.pipeline import PassContext, PassReport


class DeadCodeElimination:
    """Removes the nodes that no graph output depends on, and the constants only they read.

    The pipeline's ``graph.cleanup()`` after every pass would remove them too; this pass does
    it explicitly so that the report counts what went.

    Rules:
      1. A node is live if it produces a graph output, or a tensor that a live node reads,
         directly or from inside one of its subgraphs (an outer-scope value). Every other node
         is removed. Subgraphs of live nodes are cleaned the same way, against their own outputs.
      2. A Constant (initializer) that only removed nodes read is removed with them.

    Must not remove:
      3. graph inputs, read or not: the user feeds them, and the model's signature stays.
      4. graph outputs or their producers, even when an output is constant.
      5. unused outputs of a live node (a Dropout mask, a MaxPool's indices): dropping one from
         the middle of a node's output list would shift the others.

    Initializers that no node reads, including those an IR < 4 model also lists as graph inputs,
    are already gone when the pass runs: onnx-graphsurgeon keeps only the constants that nodes
    or outputs refer to, so they never reach the graph (nor this report).
    """

    name = "dead-code-elimination"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        self._clean(graph, report)
        return report

    def _clean(self, graph: gs.Graph, report: PassReport) -> None:
        constants_before = _constant_names(graph)
        live = _live_nodes(graph)
        for node in graph.nodes:
            self._try_remove(node, live, report)
        graph.nodes = [node for node in graph.nodes if id(node) in live]
        for _ in constants_before - _constant_names(graph):
            report.record("unused constant")
        for node in graph.nodes:
            for subgraph in node.subgraphs():
                self._clean(subgraph, report)

    def _try_remove(self, node: gs.Node, live: set[int], report: PassReport) -> bool:
        if id(node) in live:
            return False
        node.inputs.clear()
        node.outputs.clear()
        report.record("dead node")
        return True


def _live_nodes(graph: gs.Graph) -> set[int]:
    """ids of the nodes of ``graph`` that some graph output depends on."""
    local = {id(node) for node in graph.nodes}
    live: set[int] = set()
    seen: set[int] = set()
    stack = list(graph.outputs)
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        for producer in tensor.inputs:
            if id(producer) in local and id(producer) not in live:
                live.add(id(producer))
                stack.extend(_tensors_read(producer))
    return live


def _tensors_read(node: gs.Node) -> Iterator[gs.Tensor]:
    """The inputs of ``node`` and every tensor its subgraphs read or output (outer-scope values)."""
    yield from node.inputs
    for subgraph in node.subgraphs(recursive=True):
        yield from subgraph.outputs
        for inner in subgraph.nodes:
            yield from inner.inputs


def _constant_names(graph: gs.Graph) -> set[str]:
    return {name for name, tensor in graph.tensors().items() if isinstance(tensor, gs.Constant)}
