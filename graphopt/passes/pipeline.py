"""Passes, their reports, and the pipeline that runs and verifies them (DESIGN.md, "Pipeline").

A pass is a small object with a ``name`` and ``run(graph, ctx) -> PassReport``. It edits the
``gs.Graph`` in place and says what it changed. When a tensor of the rewritten graph stands for
one or more tensors of its input graph (a folded constant, a fused output, a bypassed no-op), the
pass records that in ``PassReport.provenance``; the manager composes those records across the
pipeline so that every tensor of the final graph can be traced to tensors of the original model.
"""
from __future__ import annotations

import dataclasses
import time
from collections import Counter
from typing import Protocol

import onnx
import onnx_graphsurgeon as gs

from graphopt import model_io
from graphopt.verify import Verification, verify

# Tensors larger than this are not materialised by constant folding (64 MiB).
DEFAULT_FOLD_LIMIT_BYTES = 64 << 20


@dataclasses.dataclass
class PassContext:
    """Options shared by all passes of one pipeline run."""

    target_opset: int | None = None
    dims: dict[str, int] = dataclasses.field(default_factory=dict)
    fold_limit_bytes: int = DEFAULT_FOLD_LIMIT_BYTES
    seed: int = 0


@dataclasses.dataclass
class PassReport:
    """What one pass did to the graph."""

    name: str
    nodes_before: int = 0
    nodes_after: int = 0
    # rule or event name -> how often it fired, e.g. {"Identity": 3, "Dropout": 1}
    rewrites: Counter = dataclasses.field(default_factory=Counter)
    # tensor name in the output graph -> names in the input graph it stands for
    provenance: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.rewrites) or self.nodes_before != self.nodes_after

    def record(self, rule: str, replacement: str | None = None, originals: list[str] | tuple = ()) -> None:
        """Count one firing of ``rule``; if given, ``replacement`` now stands for ``originals``."""
        self.rewrites[rule] += 1
        stands_for = [name for name in originals if name != replacement]
        if replacement is not None and stands_for:
            merged = self.provenance.setdefault(replacement, [])
            merged.extend(name for name in stands_for if name not in merged)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "changed": self.changed,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "rewrites": dict(self.rewrites),
            "notes": list(self.notes),
            "seconds": round(self.seconds, 4),
        }


class Pass(Protocol):
    name: str

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport: ...


@dataclasses.dataclass
class PipelineResult:
    model: onnx.ModelProto
    reports: list[PassReport]
    # final tensor name -> original tensor names (only tensors that were rewritten)
    provenance: dict[str, list[str]]
    verification: Verification | None = None
    # name of the first pass whose prefix of the pipeline fails verification
    culprit: str | None = None

    @property
    def ok(self) -> bool:
        return self.verification is None or self.verification.ok


def compose_provenance(total: dict[str, list[str]], step: dict[str, list[str]]) -> dict[str, list[str]]:
    """Rewrite ``step`` (names of the previous graph) in terms of the original model's names."""
    result = dict(total)
    for new_name, old_names in step.items():
        originals: list[str] = []
        for old in old_names:
            for name in total.get(old, [old]):
                if name not in originals:
                    originals.append(name)
        result[new_name] = originals
    return result


class PassManager:
    """Runs an ordered list of passes on a model, then verifies the result against the input.

    If verification fails, prefixes of the pipeline are re-run and verified to name the first
    pass that broke the model (``PipelineResult.culprit``).
    """

    def __init__(self, passes: list[Pass], ctx: PassContext | None = None):
        self.passes = list(passes)
        self.ctx = ctx or PassContext()

    def apply(self, model: onnx.ModelProto, passes: list[Pass] | None = None) -> PipelineResult:
        graph = model_io.to_graph(model)
        reports: list[PassReport] = []
        provenance: dict[str, list[str]] = {}
        for p in self.passes if passes is None else passes:
            before = len(graph.nodes)
            start = time.perf_counter()
            report = p.run(graph, self.ctx)
            graph.cleanup().toposort()
            report.seconds = time.perf_counter() - start
            report.nodes_before, report.nodes_after = before, len(graph.nodes)
            provenance = compose_provenance(provenance, report.provenance)
            reports.append(report)
        return PipelineResult(model_io.to_model(graph, like=model), reports, provenance)

    def run(self, model: onnx.ModelProto, *, check: bool = True, rtol: float = 1e-5) -> PipelineResult:
        result = self.apply(model)
        if not check:
            return result
        result.verification = verify(model, result.model, dims=self.ctx.dims, seed=self.ctx.seed, rtol=rtol)
        if not result.verification.ok:
            result.culprit = self.find_culprit(model, rtol)
        return result

    def find_culprit(self, model: onnx.ModelProto, rtol: float) -> str | None:
        """Name the first pass whose pipeline prefix no longer matches the original model."""
        for end in range(1, len(self.passes) + 1):
            prefix = self.apply(model, self.passes[:end])
            if not verify(model, prefix.model, dims=self.ctx.dims, seed=self.ctx.seed, rtol=rtol).ok:
                return self.passes[end - 1].name
        return None
