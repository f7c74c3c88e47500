"""Initializer deduplication: constants holding the same data become one tensor."""
from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import dtype_to_onnx
from onnx_graphsurgeon.ir.tensor import LazyValues

from graphopt.passes.pipeline import PassContext, PassReport


class InitializerDeduplication:
    """Merges the main graph's constants (initializers) that hold identical data.

    Rules:
      1. Constants with the same exported dtype, the same shape and the same bytes are one
         tensor: every reader of a duplicate (in the graph or a subgraph) reads the first of
         them in graph order instead, and provenance says the kept one stands for the others.
      2. Candidates are grouped by dtype and shape; only groups of two or more are hashed
         (SHA-256 of the bytes), and equal hashes are confirmed by comparing the bytes.
      3. Scalars and tiny constants merge like any other: a merge never changes a value, and
         there is no reason to keep two copies of one.

    Must not merge:
      4. a Constant that is a graph output: its name is part of the model's interface.
      5. values that are equal as numbers but not as bytes (0.0 and -0.0; NaNs with different
         payloads), nor equal bytes under a different dtype or shape.
      6. string tensors: their values are Python objects, not bytes.
    Constants that only subgraph nodes read stay where they are.
    """

    name = "initializer-dedup"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        outputs = {id(t) for t in graph.outputs}
        groups: dict[tuple, list[gs.Constant]] = defaultdict(list)
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant) and id(tensor) not in outputs:
                groups[(dtype_to_onnx(tensor.export_dtype), tuple(tensor.shape))].append(tensor)
        for group in groups.values():
            if len(group) > 1:
                self._merge_group(group, report)
        return report

    def _merge_group(self, group: list[gs.Constant], report: PassReport) -> None:
        # Only hashes are kept: holding every candidate's bytes could double the model in memory.
        kept: dict[str, list[gs.Constant]] = defaultdict(list)
        for tensor in group:
            data = _bytes(tensor)
            if data is None:
                continue
            same_hash = kept[hashlib.sha256(data).hexdigest()]
            if not any(self._try_merge(tensor, data, keep, report) for keep in same_hash):
                same_hash.append(tensor)

    def _try_merge(self, duplicate: gs.Constant, data: bytes, keep: gs.Constant, report: PassReport) -> bool:
        if _bytes(keep) != data:
            return False
        for reader in list(duplicate.outputs):
            for i, tensor in enumerate(reader.inputs):
                if tensor is duplicate:
                    reader.inputs[i] = keep
        report.record("duplicate", replacement=keep.name, originals=[duplicate.name])
        return True


def _bytes(tensor: gs.Constant) -> bytes | None:
    # Weights not loaded yet are read without caching them as arrays on the graph.
    values = tensor._values.load() if isinstance(tensor._values, LazyValues) else tensor.values
    values = np.asarray(values)
    return None if values.dtype.kind in "OSU" else np.ascontiguousarray(values).tobytes()
