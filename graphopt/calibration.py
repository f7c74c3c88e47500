"""Calibration: the data a model is calibrated on, and the value ranges of its tensors on that data.

Data sources (:func:`calibration_data`):

- an ``.npz`` file or a dict of arrays: one array per model input, first axis = samples;
- ``"module:function"`` or ``"path/to/file.py:function"``: the function returns an iterable of feed dicts;
- an object with onnxruntime's ``CalibrationDataReader`` interface (``get_next()`` returns a feed
  dict, then ``None``), or any iterable of feed dicts;
- ``"random"``: seeded random inputs, only when asked for by name, with a warning.

Every source is checked against the model's inputs (names, dtypes, ranks, fixed dims) before any
work is done; a lazy source is checked item by item, its first item before the model runs.

Ranges (:func:`collect_ranges`) come from running the model on onnxruntime, the oracle, with the
tensors of interest added as graph outputs, batch by batch. Collectors keep a running min/max and,
for ``percentile`` and ``entropy``, one fixed-size histogram per tensor, so memory is bounded by
(tensors × bins), never by the number of samples.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx

from graphopt.errors import GraphoptError, InputSpecError
from graphopt.feeds import InputSpec, input_specs, make_feeds, read_npz
from graphopt.oracle import ort_session

METHODS = ("minmax", "percentile", "entropy")
DEFAULT_BATCH_SIZE = 32
DEFAULT_RANDOM_BATCHES = 8
DEFAULT_PERCENTILE = 99.99
# 4096 bins (2048 per sign) resolve a 255-level grid 8 times over, enough for the KL search.
DEFAULT_BINS = 4096
# Levels of the quantized copy in the KL search: what uint8 gives a non-negative tensor (ReLU
# outputs) over [0, t], what int8 gives a signed one over [-t, t] (TensorRT's 128). The
# threshold can go down to that many of the 2048 magnitude bins, 1/8 of the largest value seen.
KL_LEVELS_NON_NEGATIVE = 255
KL_LEVELS_SIGNED = 128

# progress(samples_done, samples_total or None)
Progress = Callable[[int, "int | None"], None]


class RandomCalibrationWarning(UserWarning):
    """Calibration runs on random inputs: ranges will not match real data."""


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

class CalibrationData:
    """Validated feed batches for one model. Iterating yields feed dicts (one batch each).

    ``num_samples`` is known for array sources and ``None`` for lazy ones. Array and
    function sources can be read again; a ``get_next()`` reader only if it has ``rewind()``.
    """

    def __init__(self, batches: Callable[[], Iterator[dict[str, np.ndarray]]], specs: list[InputSpec],
                 source: str, num_samples: int | None = None, rewind: Callable[[], None] | None = None,
                 reusable: bool = True):
        self._batches = batches
        self.specs = specs
        self.source = source
        self.num_samples = num_samples
        self._rewind = rewind
        self._reusable = reusable
        self._used = False

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self._used:
            if self._rewind is not None:
                self._rewind()
            elif not self._reusable:
                raise InputSpecError(f"calibration data {self.source} can be read only once",
                                     "give an .npz file, a function, or a reader with rewind()")
        self._used = True
        return self._batches()


def calibration_data(source, model: onnx.ModelProto, *, batch_size: int = DEFAULT_BATCH_SIZE,
                     dims: dict[str, int] | None = None, seed: int = 0,
                     random_batches: int = DEFAULT_RANDOM_BATCHES) -> CalibrationData:
    """Wrap ``source`` (see the module docstring) as validated batches for ``model``."""
    specs = input_specs(model)
    if isinstance(source, CalibrationData):
        return source
    if isinstance(source, str) and source == "random":
        return _random_data(model, specs, dims or {}, seed, random_batches)
    if isinstance(source, (str, Path)) and (str(source).endswith(".npz") or Path(source).is_file()):
        return _npz_data(Path(source), specs, batch_size)
    if isinstance(source, str):
        return _function_data(source, specs)
    if isinstance(source, dict):
        return _array_data(source, specs, batch_size, "the given arrays")
    if hasattr(source, "get_next"):
        return _reader_data(source, specs)
    if isinstance(source, Iterable):
        return _lazy_data(lambda: iter(source), specs, type(source).__name__,
                          reusable=isinstance(source, (list, tuple)))
    raise InputSpecError(f"cannot calibrate from a {type(source).__name__}",
                         "give an .npz file, 'module:function', a reader with get_next(), or 'random'")


def _random_data(model, specs, dims, seed, batches) -> CalibrationData:
    warnings.warn("calibrating on random inputs: the int8 ranges will not match real data",
                  RandomCalibrationWarning, stacklevel=3)

    def generate():
        return (make_feeds(model, dims, seed + i) for i in range(batches))
    first = next(iter(make_feeds(model, dims, seed).values()), None)
    samples = batches * (first.shape[0] if first is not None and first.ndim else 1)
    return CalibrationData(generate, specs, "random", samples)


def _npz_data(path: Path, specs, batch_size) -> CalibrationData:
    return _array_data(read_npz(path, "calibration file"), specs, batch_size, str(path))


def _check_array(array: np.ndarray, spec: InputSpec, source: str, rank_hint: str) -> None:
    """dtype and rank of one input array; fixed dims are checked by the caller (samples axis or not)."""
    _check_dtype(array, spec, source)
    if array.ndim != len(spec.dims):
        raise InputSpecError(f"{source}: '{spec.name}' has shape {list(array.shape)}, the model's input is "
                             f"{spec.shape_text()}", rank_hint)


def _array_data(arrays: dict, specs: list[InputSpec], batch_size: int, source: str) -> CalibrationData:
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    _check_names(arrays, specs, source)
    counts = set()
    for spec in specs:
        array = arrays[spec.name]
        _check_array(array, spec, source, "the first axis holds the samples, one row per batch item")
        _check_fixed_dims(array.shape[1:], spec.dims[1:], spec, source, offset=1)
        counts.add(array.shape[0])
    if len(counts) > 1:
        raise InputSpecError(f"{source}: inputs have different numbers of samples ({sorted(counts)})",
                             "every array needs the same first axis")
    total = counts.pop() if counts else 0
    # A fixed batch axis takes exactly that many samples per run; a symbolic one takes batch_size.
    fixed = sorted({spec.dims[0] for spec in specs if spec.dims and isinstance(spec.dims[0], int)})
    step = fixed[0] if fixed else batch_size
    usable = total - total % step if fixed else total
    if usable == 0:
        raise InputSpecError(f"{source}: no calibration samples" + (f" (the model's batch is {step})" if total else ""),
                             "give at least one sample per input")

    def batches():
        for start in range(0, usable, step):
            yield {name: arrays[name][start:start + step] for name in (s.name for s in specs)}
    return CalibrationData(batches, specs, source, usable)


def _function_data(spec_text: str, specs) -> CalibrationData:
    module_name, sep, function_name = spec_text.rpartition(":")
    if not sep or not module_name or not function_name:
        raise InputSpecError(f"calibration '{spec_text}': not a file, 'module:function' or 'random'",
                             "e.g. --calibration calib.npz or --calibration mypkg.data:calibration_batches")
    function = _import_function(module_name, function_name, spec_text)
    return _lazy_data(lambda: iter(function()), specs, spec_text, reusable=True)


def _import_function(module_name: str, function_name: str, spec_text: str):
    if module_name.endswith(".py"):
        from graphopt.export import load_factory  # the project's one way to import a user file
        values = load_factory(spec_text)
        return lambda: values
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputSpecError(f"calibration '{spec_text}': cannot import {module_name} ({exc})",
                             "give an importable module or path/to/file.py:function") from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise InputSpecError(f"calibration '{spec_text}': {module_name} has no function '{function_name}'",
                             "the function returns an iterable of {input name: array} dicts")
    return function


def _reader_data(reader, specs) -> CalibrationData:
    def items():
        while (item := reader.get_next()) is not None:
            yield item
    rewind = getattr(reader, "rewind", None)
    return _lazy_data(items, specs, type(reader).__name__, reusable=False, rewind=rewind)


def _lazy_data(make_iter, specs, source: str, *, reusable: bool, rewind=None) -> CalibrationData:
    """Items are feed dicts; the first is fetched and checked now, so bad data fails before any work."""
    iterator = make_iter()
    first = next(iterator, None)
    if first is None:
        raise InputSpecError(f"calibration data {source} is empty", "it must yield at least one feed dict")
    check_feeds(first, specs, f"{source}, item 0")
    pending = [(first, iterator)]

    def batches():
        if pending:
            head, rest = pending.pop()
            items = _chain(head, rest)
        else:
            items = make_iter()
        for index, item in enumerate(items):
            yield check_feeds(item, specs, f"{source}, item {index}")
    return CalibrationData(batches, specs, source, None, rewind, reusable)


def _chain(head, rest):
    yield head
    yield from rest


def check_feeds(feeds, specs: list[InputSpec], source: str) -> dict[str, np.ndarray]:
    """``feeds`` as arrays, or an InputSpecError naming the first input that does not fit."""
    if not isinstance(feeds, dict):
        raise InputSpecError(f"{source}: expected a dict of input name -> array, got {type(feeds).__name__}",
                             f"the model's inputs: {', '.join(s.name for s in specs)}")
    arrays = {name: np.asarray(value) for name, value in feeds.items()}
    _check_names(arrays, specs, source)
    for spec in specs:
        array = arrays[spec.name]
        _check_array(array, spec, source, "give one batch per item, shaped like the input")
        _check_fixed_dims(array.shape, spec.dims, spec, source)
    return {spec.name: arrays[spec.name] for spec in specs}


def _check_names(arrays: dict, specs: list[InputSpec], source: str) -> None:
    wanted = [s.name for s in specs]
    missing = [n for n in wanted if n not in arrays]
    extra = [n for n in arrays if n not in wanted]
    if missing or extra:
        what = "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                       extra and f"not model inputs: {', '.join(extra)}"]))
        raise InputSpecError(f"{source}: {what}", f"the model's inputs: {', '.join(wanted)}")


def _check_dtype(array: np.ndarray, spec: InputSpec, source: str) -> None:
    if array.dtype != spec.dtype:
        raise InputSpecError(f"{source}: '{spec.name}' is {array.dtype}, the model's input is {spec.dtype}",
                             f"convert it, e.g. array.astype(np.{spec.dtype})")


def _check_fixed_dims(shape, dims, spec: InputSpec, source: str, offset: int = 0) -> None:
    for axis, (size, want) in enumerate(zip(shape, dims)):
        if isinstance(want, int) and size != want:
            raise InputSpecError(f"{source}: '{spec.name}' has size {size} on axis {axis + offset}, "
                                 f"the model's input is {spec.shape_text()}", "reshape or resize the data")


# ---------------------------------------------------------------------------------------------
# Ranges
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TensorRange:
    """Calibrated range of one tensor: ``low``/``high`` to quantize with, ``min``/``max`` seen."""
    low: float
    high: float
    min: float
    max: float


class MinMaxCollector:
    """Running min and max per tensor."""

    def __init__(self):
        self.min: dict[str, float] = {}
        self.max: dict[str, float] = {}

    def update(self, name: str, values: np.ndarray) -> None:
        if values.size == 0:
            return
        low, high = float(values.min()), float(values.max())
        self.min[name] = min(low, self.min.get(name, low))
        self.max[name] = max(high, self.max.get(name, high))

    def range(self, name: str) -> TensorRange:
        return TensorRange(self.min[name], self.max[name], self.min[name], self.max[name])


class HistogramCollector(MinMaxCollector):
    """A histogram of ``bins`` bins over ``[-bound, bound]`` per tensor, plus min/max.

    When a batch exceeds the bound, the bound doubles and pairs of bins merge into the middle
    half, which is exact, so the histogram never depends on the order the batches came in
    beyond bin resolution, and its size never grows.
    """

    def __init__(self, bins: int = DEFAULT_BINS):
        super().__init__()
        if bins < 256 or bins % 4:
            raise ValueError("bins must be a multiple of 4, at least 256")
        self.bins = bins
        self.hist: dict[str, np.ndarray] = {}
        self.bound: dict[str, float] = {}
        self.zeros: dict[str, int] = {}

    def update(self, name: str, values: np.ndarray) -> None:
        super().update(name, values)
        if values.size == 0:
            return
        values = values.ravel()
        peak = float(np.abs(values).max())
        if name not in self.hist:
            self.hist[name] = np.zeros(self.bins, np.int64)
            self.bound[name] = peak if peak > 0 else 1e-8
            self.zeros[name] = 0
        while peak > self.bound[name]:
            self._double(name)
        # Exact zeros (a ReLU's negative half) are counted apart: any grid holds them exactly, and
        # in the first bin they would dominate the KL search and push it to clip real values.
        nonzero = values[values != 0]
        self.zeros[name] += values.size - nonzero.size
        bound = self.bound[name]
        index = ((nonzero.astype(np.float64) + bound) * (self.bins / (2 * bound))).astype(np.int64)
        np.clip(index, 0, self.bins - 1, out=index)
        self.hist[name] += np.bincount(index, minlength=self.bins)

    def _double(self, name: str) -> None:
        merged = self.hist[name].reshape(-1, 2).sum(axis=1)
        wider = np.zeros(self.bins, np.int64)
        wider[self.bins // 4: 3 * self.bins // 4] = merged
        self.hist[name] = wider
        self.bound[name] *= 2

    def edges(self, name: str) -> np.ndarray:
        return np.linspace(-self.bound[name], self.bound[name], self.bins + 1)

    def percentile_range(self, name: str, percentile: float) -> TensorRange:
        """Two-sided: ``(100 - p)/2`` % of the values may fall below ``low``, as many above ``high``."""
        hist, edges = self.hist[name].copy(), self.edges(name)
        hist[self.bins // 2] += self.zeros[name]
        cdf = np.cumsum(hist) / hist.sum()
        tail = (100.0 - percentile) / 200.0
        low = edges[int(np.searchsorted(cdf, tail, side="right"))]
        high = edges[int(np.searchsorted(cdf, 1.0 - tail, side="left")) + 1]
        low, high = max(float(low), self.min[name]), min(float(high), self.max[name])
        return TensorRange(low, high, self.min[name], self.max[name])

    def entropy_range(self, name: str) -> TensorRange:
        """The clipping threshold on |x| that minimises KL(P || Q), P the histogram, Q its quantized copy."""
        hist = self.hist[name]
        half = self.bins // 2
        magnitude = hist[half:] + hist[:half][::-1]  # bin i covers |x| in [i, i+1) * bin width
        levels = KL_LEVELS_NON_NEGATIVE if self.min[name] >= 0 else KL_LEVELS_SIGNED
        threshold_bins = kl_threshold_bins(magnitude, levels)
        threshold = threshold_bins * self.bound[name] / half
        low, high = max(self.min[name], -threshold), min(self.max[name], threshold)
        return TensorRange(low, high, self.min[name], self.max[name])


def kl_threshold_bins(hist: np.ndarray, levels: int, candidates: int = 128) -> int:
    """How many leading bins of ``hist`` to keep so that quantizing them to ``levels`` loses least.

    TensorRT's calibration: P is the kept bins with the clipped tail added to the last one; Q
    merges the kept bins into ``levels`` groups and spreads each group evenly over its non-empty
    bins. About ``candidates`` thresholds are tried, evenly spaced.
    """
    n = len(hist)
    if n <= levels or hist.sum() == 0:
        return n
    hist = hist.astype(np.float64)
    step = max(1, (n - levels) // candidates)
    best, best_bins = math.inf, n
    for kept in range(levels, n + 1, step):
        p = hist[:kept].copy()
        p[-1] += hist[kept:].sum()
        nonzero = hist[:kept] > 0
        starts = (np.arange(levels) * kept) // levels
        sums = np.add.reduceat(hist[:kept], starts)
        counts = np.add.reduceat(nonzero.astype(np.float64), starts)
        per_bin = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        q = np.repeat(per_bin, np.diff(np.append(starts, kept))) * nonzero
        divergence = _kl(p, q)
        if divergence < best:
            best, best_bins = divergence, kept
    return best_bins


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    q_total = q.sum()
    if q_total == 0:
        return math.inf
    q = q / q_total
    mask = p > 0
    # A bin that P fills and Q leaves empty (the clipped tail) costs as if Q held a tiny mass there.
    q_masked = np.maximum(q[mask], 1e-12)
    return float(np.sum(p[mask] * np.log(p[mask] / q_masked)))


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs also include the tensors ``names``."""
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    present = {o.name for o in extended.graph.output}
    extended.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names if name not in present)
    return extended


def run_batches(model: onnx.ModelProto, names: list[str], data: CalibrationData, *,
                threads: int = 1, progress: Progress | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Run ``model`` on each batch of ``data`` and yield the tensors ``names``, batch by batch."""
    session = ort_session(with_outputs(model, names), threads=threads, optimize=True)
    done = 0
    for feeds in data:
        try:
            values = session.run(names, feeds)
        except Exception as exc:  # onnxruntime raises several unrelated exception types
            raise GraphoptError(f"onnxruntime failed on calibration batch {done}: "
                                f"{str(exc).strip().splitlines()[0]}", "check the calibration data's shapes") from exc
        done += len(next(iter(feeds.values()))) if feeds and next(iter(feeds.values())).ndim else 1
        if progress is not None:
            progress(done, data.num_samples)
        yield dict(zip(names, values))


def collect_ranges(model: onnx.ModelProto, names: Iterable[str], data: CalibrationData, *,
                   method: str = "minmax", percentile: float = DEFAULT_PERCENTILE, bins: int = DEFAULT_BINS,
                   threads: int = 1, progress: Progress | None = None) -> dict[str, TensorRange]:
    """Calibrated range of every float tensor in ``names``, by ``method`` (minmax, percentile, entropy)."""
    if method not in METHODS:
        raise InputSpecError(f"unknown calibration method '{method}'", f"choose one of {', '.join(METHODS)}")
    if not 0 < percentile <= 100:
        raise InputSpecError(f"percentile {percentile} is not in (0, 100]", "e.g. 99.99")
    names = list(dict.fromkeys(names))
    collector = MinMaxCollector() if method == "minmax" else HistogramCollector(bins)
    for values in run_batches(model, names, data, threads=threads, progress=progress):
        for name, array in values.items():
            if np.issubdtype(array.dtype, np.floating):
                collector.update(name, array)
    ranges = {}
    for name in names:
        if name not in collector.min:
            continue
        if method == "minmax":
            ranges[name] = collector.range(name)
        elif method == "percentile":
            ranges[name] = collector.percentile_range(name, percentile)
        else:
            ranges[name] = collector.entropy_range(name)
    return ranges
