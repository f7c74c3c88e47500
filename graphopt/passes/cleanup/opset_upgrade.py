"""Opset upgrade: the default-domain opset is converted to a newer one."""
from __future__ import annotations

import onnx
import onnx.version_converter
import onnx_graphsurgeon as gs

from graphopt import model_io
from graphopt.errors import PassError
from graphopt.passes.pipeline import PassContext, PassReport


class OpsetUpgrade:
    """Converts the graph's default-domain (``ai.onnx``) opset to a target version with
    ``onnx.version_converter``, e.g. to reach opset 13 for per-channel DequantizeLinear.

    Rules:
      1. The target is the pass's own ``target`` if given, else ``ctx.target_opset``.
      2. A graph below the target is exported, converted, and its contents replaced in place by
         the converted ones: nodes, inputs, outputs, opset and opset imports. The converter keeps
         tensor names, so no provenance is recorded.

    Must not:
      3. fire when the graph is already at the target.
      4. downgrade: a target below the graph's opset is a PassError.
      5. go on after a failed conversion: the converter's message becomes a PassError.
      6. accept a target newer than the installed onnx knows, or no target at all (PassError).
    """

    name = "opset-upgrade"

    def __init__(self, target: int | None = None):
        self.target = target

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        target = self.target if self.target is not None else ctx.target_opset
        self._check_target(graph.opset, target)
        self._try_convert(graph, target, report)
        return report

    def _check_target(self, current: int, target: int | None) -> None:
        latest = onnx.defs.onnx_opset_version()
        if target is None:
            raise PassError("opset upgrade: no target opset given", "give a target opset, e.g. 13")
        if target > latest:
            raise PassError(f"opset upgrade: target opset {target} is newer than the installed onnx "
                            f"{onnx.__version__} supports (opset {latest})", f"choose an opset up to {latest}")
        if target < current:
            raise PassError(f"opset upgrade: the model is at opset {current}, above the target {target}; "
                            "graphopt does not downgrade", f"choose a target of at least {current}")

    def _try_convert(self, graph: gs.Graph, target: int, report: PassReport) -> bool:
        current = graph.opset
        if target == current:
            return False
        model = model_io.to_model(graph)
        # IR < 4 requires initializers to be graph inputs, which the exported graph no longer lists.
        model.ir_version = max(model.ir_version,
                               onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True))
        try:
            converted = onnx.version_converter.convert_version(model, target)
        except (onnx.version_converter.ConvertError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PassError(f"opset upgrade from {current} to {target} failed: {first}",
                            f"re-export the model at opset {target}, or choose another target") from exc
        new = model_io.to_graph(converted)
        graph.nodes, graph.inputs, graph.outputs = new.nodes, new.inputs, new.outputs
        graph.opset, graph.import_domains, graph.ir_version = new.opset, new.import_domains, new.ir_version
        report.record(f"opset {current} -> {target}")
        return True
