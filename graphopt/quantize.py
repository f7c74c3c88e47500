"""int8 quantization of a model: calibrate on onnxruntime, rewrite with the quantize passes, and
measure the error each quantized tensor adds (per-layer SQNR).

``quantize(model, calibration=...)`` is what ``graphopt optimize --quantize int8|dynamic`` calls::

    result = quantize("resnet18.onnx", calibration="calib.npz", method="entropy")
    graphopt.save_model(result.model, "resnet18.int8.onnx")
    for layer in layer_errors(original, result, calibration_data("calib.npz", original)):
        print(layer.name, layer.sqnr_db)
"""
from __future__ import annotations

import dataclasses
import math
import os
import time

import numpy as np
import onnx

from graphopt import model_io
from graphopt.calibration import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_PERCENTILE,
    METHODS,
    CalibrationData,
    Progress,
    TensorRange,
    calibration_data,
    collect_ranges,
    with_outputs,
)
from graphopt.errors import InputSpecError, PassError
from graphopt.oracle import ort_session
from graphopt.passes import PassContext, PassManager, PipelineResult
from graphopt.passes.cleanup import OpsetUpgrade, cleanup_passes
from graphopt.passes.pipeline import compose_provenance
from graphopt.passes.quantize import DynamicQuantization, QDQInsertion
from graphopt.passes.quantize.int8_params import ACTIVATION_TYPES

MODES = ("static", "dynamic")
# Per-channel DequantizeLinear (its ``axis``) needs opset 13; older models are upgraded first.
QUANTIZE_OPSET = 13


@dataclasses.dataclass
class QuantizeResult(PipelineResult):
    mode: str = "static"
    ranges: dict[str, TensorRange] = dataclasses.field(default_factory=dict)
    calibration_samples: int = 0
    calibration_seconds: float = 0.0

    @property
    def quantized_tensors(self) -> dict[str, str]:
        """Tensor of the quantized model -> the fp32 tensor of the input model it stands for."""
        final = self.reports[-1].provenance if self.reports else {}
        return {name: self.provenance.get(name, originals)[-1] for name, originals in final.items()}

    @property
    def notes(self) -> list[str]:
        return [note for report in self.reports for note in report.notes]


def quantize(model: onnx.ModelProto | str | os.PathLike, calibration=None, *, method: str = "minmax",
             percentile: float = DEFAULT_PERCENTILE, per_channel: bool = True, activation_type: str = "u8",
             exclude=(), keep_fp32=(), mode: str = "static", batch_size: int = DEFAULT_BATCH_SIZE,
             dims: dict[str, int] | None = None, threads: int = 1,
             progress: Progress | None = None, speed_rules: bool = True, cleanup: bool = True) -> QuantizeResult:
    """Quantize ``model`` to int8 (see the module docstring).

    ``mode="static"`` needs ``calibration`` (anything :func:`~graphopt.calibration.calibration_data`
    takes; ``"random"`` only by name) and writes QDQ; ``mode="dynamic"`` needs none and rewrites
    MatMul/Gemm only. ``exclude``: node names or op types; ``keep_fp32``: node names, ``first``,
    ``last``. ``progress(samples_done, samples_total_or_None)`` is called after each calibration batch.
    ``cleanup`` runs graphopt's cleanup passes first (a pipeline that already ran them passes False);
    a model below opset 13 is upgraded either way. ``speed_rules``: see QDQInsertion rules 11-12.
    """
    if not isinstance(model, onnx.ModelProto):
        model = model_io.load_model(model)
    _check_options(mode, method, activation_type)
    ctx = PassContext(dims=dict(dims or {}))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), QUANTIZE_OPSET)
    if opset < QUANTIZE_OPSET:
        ctx.target_opset = QUANTIZE_OPSET
    upgrade = [OpsetUpgrade(QUANTIZE_OPSET)] if opset < QUANTIZE_OPSET else []
    # Cleanup first: folded Constant nodes become the constant weights the passes look for.
    prepare = cleanup_passes(ctx) if cleanup else upgrade
    if mode == "dynamic":
        passes = prepare + [DynamicQuantization(per_channel=per_channel, activation_type=activation_type,
                                                exclude=exclude, keep_fp32=keep_fp32)]
        result = PassManager(passes, ctx).apply(model)
        return _finish(result, mode)
    if calibration is None:
        raise InputSpecError("static int8 quantization needs calibration data",
                             "give --calibration DATA (.npz, module:function, or 'random'), or use --quantize dynamic")
    data = calibration_data(calibration, model, batch_size=batch_size, dims=ctx.dims)
    upgraded = PassManager(prepare, ctx).apply(model)
    qdq = QDQInsertion(per_channel=per_channel, activation_type=activation_type, exclude=exclude,
                       keep_fp32=keep_fp32, speed_rules=speed_rules)
    names = qdq.calibration_tensors(model_io.to_graph(upgraded.model))
    start = time.perf_counter()
    counter = _SampleCounter(progress)
    qdq.ranges = collect_ranges(upgraded.model, names, data, method=method, percentile=percentile,
                                threads=threads, progress=counter)
    seconds = time.perf_counter() - start
    quantized = PassManager([qdq], ctx).apply(upgraded.model)
    result = PipelineResult(quantized.model, upgraded.reports + quantized.reports,
                            compose_provenance(upgraded.provenance, quantized.provenance))
    return _finish(result, mode, qdq.ranges, counter.samples, seconds)


def _check_options(mode: str, method: str, activation_type: str) -> None:
    if mode not in MODES:
        raise PassError(f"quantize: unknown mode '{mode}'", f"choose one of {', '.join(MODES)}")
    if method not in METHODS:
        raise PassError(f"quantize: unknown calibration method '{method}'", f"choose one of {', '.join(METHODS)}")
    if activation_type not in ACTIVATION_TYPES:
        raise PassError(f"quantize: unknown activation type '{activation_type}'",
                        f"choose one of {', '.join(ACTIVATION_TYPES)} (u8 is the fast one on x86)")


def _finish(result: PipelineResult, mode: str, ranges=None, samples: int = 0, seconds: float = 0.0) -> QuantizeResult:
    onnx.checker.check_model(result.model)
    return QuantizeResult(result.model, result.reports, result.provenance, mode=mode, ranges=dict(ranges or {}),
                          calibration_samples=samples, calibration_seconds=seconds)


class _SampleCounter:
    """Passes progress on and remembers how many samples calibration saw."""

    def __init__(self, progress: Progress | None):
        self.progress = progress
        self.samples = 0

    def __call__(self, done: int, total: int | None) -> None:
        self.samples = done
        if self.progress is not None:
            self.progress(done, total)


@dataclasses.dataclass
class LayerError:
    """How far one quantized tensor is from the fp32 tensor it stands for, over a data set."""
    name: str  # in the quantized model
    original: str  # in the input model
    sqnr_db: float  # 10·log10(Σ ref² / Σ (ref − quantized)²); inf when equal
    cosine: float
    max_abs: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"sqnr_db": None if math.isinf(self.sqnr_db) else round(self.sqnr_db, 3)}


def layer_errors(original: onnx.ModelProto, result: QuantizeResult, data: CalibrationData, *,
                 include_outputs: bool = True, threads: int = 1) -> list[LayerError]:
    """SQNR of every quantized tensor (paired by provenance) and graph output, in graph order.

    Both models run batch by batch on the same feeds; only sums are kept, so memory does not
    grow with the number of samples.
    """
    pairs = dict(result.quantized_tensors)
    if include_outputs:
        pairs |= {o.name: o.name for o in result.model.graph.output}
    quantized_names, original_names = list(pairs), list(dict.fromkeys(pairs.values()))
    reference = ort_session(with_outputs(original, original_names), threads=threads, optimize=True)
    candidate = ort_session(with_outputs(result.model, quantized_names), threads=threads, optimize=True)
    sums = {name: np.zeros(5) for name in quantized_names}  # Σref², Σerr², Σref·q, Σq², max|err|
    for feeds in data:
        ref = dict(zip(original_names, reference.run(original_names, feeds)))
        got = dict(zip(quantized_names, candidate.run(quantized_names, feeds)))
        for name in quantized_names:
            r = ref[pairs[name]].astype(np.float64).ravel()
            q = got[name].astype(np.float64).ravel()
            err = r - q
            s = sums[name]
            s[:4] += (r @ r, err @ err, r @ q, q @ q)
            s[4] = max(s[4], float(np.abs(err).max(initial=0.0)))
    return [_layer_error(name, pairs[name], sums[name]) for name in quantized_names]


def _layer_error(name: str, original: str, s: np.ndarray) -> LayerError:
    signal, noise, dot, q_energy, max_abs = s
    sqnr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    norms = math.sqrt(signal * q_energy)
    cosine = 1.0 if norms == 0 and signal == q_energy else (dot / norms if norms else 0.0)
    return LayerError(name, original, sqnr, float(cosine), float(max_abs))
