"""Numerical verification of a rewritten model against the original (DESIGN.md, "verified").

Both models run on onnxruntime with its graph optimizations off, on the same seeded inputs.
For each output: max abs error, max relative error (max abs error divided by the largest
magnitude of the reference output, so that near-zero elements do not dominate), and cosine
similarity. Non-float outputs must match exactly.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from graphopt.feeds import make_feeds
from graphopt.oracle import run_oracle


@dataclasses.dataclass
class OutputDiff:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    cosine: float
    ok: bool
    problem: str = ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"shape": list(self.shape)}


@dataclasses.dataclass
class Verification:
    ok: bool
    outputs: list[OutputDiff]
    rtol: float
    input_shapes: dict[str, list[int]]
    seed: int

    def to_json(self) -> dict:
        return {"ok": self.ok, "rtol": self.rtol, "seed": self.seed, "input_shapes": self.input_shapes,
                "outputs": [o.to_json() for o in self.outputs]}


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def compare_output(name: str, ref: np.ndarray, got: np.ndarray | None, rtol: float) -> OutputDiff:
    if got is None:
        return OutputDiff(name, tuple(ref.shape), np.inf, np.inf, 0.0, False, "missing from the optimized model")
    if ref.shape != got.shape:
        return OutputDiff(name, tuple(ref.shape), np.inf, np.inf, 0.0, False, f"shape {got.shape} != {ref.shape}")
    if ref.dtype != got.dtype:
        return OutputDiff(name, tuple(ref.shape), np.inf, np.inf, 0.0, False, f"dtype {got.dtype} != {ref.dtype}")
    if ref.size == 0:
        return OutputDiff(name, tuple(ref.shape), 0.0, 0.0, 1.0, True)
    if ref.dtype.kind not in "fc":
        equal = bool(np.array_equal(ref, got))
        mismatch = float(np.mean(ref != got))
        return OutputDiff(name, tuple(ref.shape), mismatch, mismatch, 1.0 if equal else 0.0, equal,
                          "" if equal else "values differ")
    nan_ref, nan_got = np.isnan(ref), np.isnan(got)
    if not np.array_equal(nan_ref, nan_got):
        return OutputDiff(name, tuple(ref.shape), np.nan, np.nan, 0.0, False, "NaN pattern differs")
    r = np.where(nan_ref, 0, ref).astype(np.float64)
    g = np.where(nan_got, 0, got).astype(np.float64)
    max_abs = float(np.max(np.abs(r - g)))
    scale = float(np.max(np.abs(r)))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
    return OutputDiff(name, tuple(ref.shape), max_abs, max_rel, cosine_similarity(r, g), max_rel <= rtol)


def verify(original: onnx.ModelProto, optimized: onnx.ModelProto, *, dims: dict[str, int] | None = None,
           seed: int = 0, rtol: float = 1e-5, feeds: dict[str, np.ndarray] | None = None) -> Verification:
    """Run both models on the same seeded inputs and compare every output of the original."""
    feeds = feeds if feeds is not None else make_feeds(original, dims, seed)
    expected = run_oracle(original, feeds)
    optimized_inputs = {i.name for i in optimized.graph.input}
    got = run_oracle(optimized, {k: v for k, v in feeds.items() if k in optimized_inputs})
    diffs = [compare_output(name, ref, got.get(name), rtol) for name, ref in expected.items()]
    return Verification(all(d.ok for d in diffs), diffs, rtol,
                        {k: list(v.shape) for k, v in feeds.items()}, seed)
