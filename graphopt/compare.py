"""``graphopt compare`` and ``graphopt bench``: accuracy and latency of model variants on backends.

Accuracy (:func:`compare`): every variant runs on every backend over the same data, batch by
batch; each output is compared with the *original model on onnxruntime*, the reference:

- ``max_abs``: largest absolute difference; ``max_rel``: ``max_abs`` divided by the largest
  magnitude of the reference output; ``cosine``: cosine similarity of the flattened outputs
  (all three from :func:`graphopt.verify.compare_output`);
- ``top1_agreement``: for a classifier-like output (float, shape ``[samples, classes]`` with at
  least 2 classes), the share of samples whose arg-max equals the reference's;
- ``top1_accuracy``: with labels, the share of samples whose arg-max (of the first
  classifier-like output) equals the label.

Per layer (``per_layer=True``, on onnxruntime): the SQNR of each intermediate tensor against the
original tensor it stands for, measured by :func:`graphopt.quantize.layer_errors`. Tensors are
paired through provenance when the variant carries it (``Variant.pairs``, e.g. from
``QuantizeResult.quantized_tensors``); for a file on disk, by the names graphopt's passes keep:
a tensor named like an original tensor stands for it, and ``X_dequantized`` (the quantizer's
DequantizeLinear output) stands for ``X`` (and is preferred over the fp32 ``X`` beside it). A
fused tensor that kept its name but absorbed an activation cannot be told apart from the file
alone: pass provenance for exact pairs. Below ``LOW_SQNR_DB`` a tensor is flagged.

Latency (:func:`measure_latency`): for each thread count, a session per variant and backend is
created, warmed up, then the runs are interleaved (one run of each session in turn, ``runs``
rounds), so that machine noise falls on every variant alike; p50, p90 and min in milliseconds.
Peak memory: the growth of the process's resident set while one session is created and warmed
up, read as ``VmHWM`` (peak RSS) from ``/proc/self/status`` after resetting it through
``/proc/self/clear_refs``, minus the RSS before; ``None`` where /proc does not offer that. It
counts what the session allocated (weights, packed buffers, plans) and not what was freed before
the peak; memory another session already holds and reuses is not counted again. One-time costs
of a backend (imports, JIT compilation, thread pools) are paid first, in an untimed session.
onnxruntime runs as deployed (all its graph optimizations) but with intra-op spinning off, so
that its idle threads do not take the cores of the session timed next.

A backend that cannot open or run a variant (graphopt's runtime missing, or an op it lacks) is
reported ``available: false`` with the reason; its numbers are absent, never made up.

JSON (:meth:`Comparison.to_json`), ``schema_version`` 1; floats that are not finite are ``null``::

    {"schema_version": 1, "tool": "compare" | "bench", "graphopt_version": str,
     "reference": {"variant": str, "backend": "onnxruntime"},
     "data": {"path": str | null, "samples": int, "inputs": {name: [dims]}, "labels": str | null} | null,
     "tolerance": {"atol": float | null, "rtol": float | null, "min_cosine": float | null},
     "ok": bool,                       # false when a tolerance is broken
     "variants": [{"name": str, "path": str, "size_bytes": int, "batch": "symbolic" | int}],
     "results": [{"variant": str, "backend": str, "available": bool, "reason": str | null,
                  "accuracy": null | {"ok": bool, "top1_accuracy": float | null,
                      "outputs": [{"name": str, "shape": [int], "max_abs": float, "max_rel": float,
                                   "cosine": float, "top1_agreement": float | null, "ok": bool}]},
                  "latency": [{"threads": int, "batch": int, "runs": int, "warmup": int,
                               "p50_ms": float, "p90_ms": float, "min_ms": float,
                               "peak_memory_bytes": int | null}]}],
     "layers": [{"variant": str, "pairing": "provenance" | "names", "low_sqnr_db": float,
                 "tensors": [{"name": str, "original": str, "sqnr_db": float | null, "cosine": float,
                              "max_abs": float, "flagged": bool}]}],
     "notes": [str]}
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
import types
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

import graphopt
from graphopt.calibration import calibration_data
from graphopt.errors import GraphoptError, InputSpecError
from graphopt.feeds import input_specs, make_feeds, read_npz
from graphopt.model_io import load_model
from graphopt.verify import compare_output

SCHEMA_VERSION = 1
BACKENDS = ("onnxruntime", "graphopt")
REFERENCE_BACKEND = "onnxruntime"
DEFAULT_BATCH_SIZE = 32
LABEL_KEYS = ("label", "labels")
# Below this SQNR a tensor is flagged: about 3 significant bits of signal left (as in optimize).
LOW_SQNR_DB = 20.0
DEQUANTIZED_SUFFIX = "_dequantized"


@dataclasses.dataclass
class Variant:
    """A model file to compare; ``pairs`` (tensor → original tensor) is its provenance, if known."""
    name: str
    path: Path
    pairs: dict[str, str] | None = None

    def __post_init__(self):
        self.path = Path(self.path)
        self.model = load_model(self.path)

    @functools.cached_property
    def size_bytes(self) -> int:
        """The file and the external-data files it names (read without loading the weights)."""
        proto = onnx.load(str(self.path), load_external_data=False)
        data = {self.path.parent / entry.value for t in proto.graph.initializer for entry in t.external_data
                if entry.key == "location"}
        return self.path.stat().st_size + sum(p.stat().st_size for p in data if p.is_file())

    @property
    def batch(self) -> str | int:
        """``symbolic`` when every input's first dim is symbolic, else the fixed batch size."""
        fixed = {s.dims[0] for s in input_specs(self.model) if s.dims and not isinstance(s.dims[0], str)}
        return "symbolic" if not fixed else int(min(d or 1 for d in fixed))


def variants_from_paths(paths: Sequence[str | os.PathLike]) -> list[Variant]:
    """Variants named by file stem (with the folder when stems collide)."""
    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    names = [str(p.with_suffix("")) if stems.count(p.stem) > 1 else p.stem for p in paths]
    return [Variant(name, path) for name, path in zip(names, paths)]


def check_same_inputs(variants: Sequence[Variant]) -> None:
    """Every variant must take the inputs of the first (same names, dtypes and fixed dims), or the
    comparison would feed one model's data to another model."""
    def signature(variant: Variant) -> list[str]:
        return [f"{s.name}: {s.dtype} {s.shape_text()}" for s in input_specs(variant.model)]

    reference = signature(variants[0])
    for variant in variants[1:]:
        if signature(variant) != reference:
            raise InputSpecError(f"{variant.path}: inputs ({'; '.join(signature(variant))}) differ from "
                                 f"{variants[0].path}'s ({'; '.join(reference)})",
                                 "compare variants of one model")


def parse_backends(text: str | Sequence[str]) -> list[str]:
    names = [b.strip() for b in (text.split(",") if isinstance(text, str) else text) if b.strip()]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown or not names:
        raise InputSpecError(f"--backends: unknown backend {', '.join(unknown) or '(none given)'}",
                             f"choose from {', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


def parse_counts(text: str, option: str) -> list[int]:
    """``"1,2"`` → ``[1, 2]`` for --threads and --batch."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise InputSpecError(f"{option} '{text}': expected a comma list of positive integers", f"e.g. {option} 1,2")
    return list(dict.fromkeys(values))


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Dataset:
    path: str | None
    batches: list[dict[str, np.ndarray]]
    labels: np.ndarray | None
    label_source: str | None

    @property
    def samples(self) -> int:
        return sum(len(next(iter(b.values()))) for b in self.batches if b)

    def to_json(self) -> dict:
        first = self.batches[0] if self.batches else {}
        return {"path": self.path, "samples": self.samples, "labels": self.label_source,
                "inputs": {k: [self.samples, *v.shape[1:]] for k, v in first.items()}}


def load_dataset(path: str | os.PathLike, model: onnx.ModelProto, labels: str | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> Dataset:
    """The inputs in ``path`` (.npz, one array per model input, samples on axis 0), checked
    against ``model``, and the labels: ``labels`` is another .npz (one array) or a key of the
    data file; without it a key ``label``/``labels`` that is not a model input is used."""
    path = Path(path)
    arrays = read_npz(path, "--data")
    input_names = {s.name for s in input_specs(model)}
    label_values, label_source = None, None
    if labels is not None and Path(labels).suffix == ".npz":
        stored = read_npz(Path(labels), "--labels")
        if len(stored) != 1:
            raise InputSpecError(f"--labels {labels}: expected one array, found {', '.join(stored) or 'none'}",
                                 "save the labels alone: numpy.savez(path, labels=y)")
        label_values, label_source = next(iter(stored.values())), str(labels)
    else:
        key = labels if labels is not None else next((k for k in LABEL_KEYS if k in arrays and k not in input_names),
                                                     None)
        if key is not None:
            if key not in arrays:
                raise InputSpecError(f"--labels {key}: not a key of {path} (keys: {', '.join(arrays)})",
                                     "give a key of the data file or a labels .npz")
            label_values, label_source = arrays.pop(key), f"{path}:{key}"
    try:
        data = calibration_data(arrays, model, batch_size=batch_size)
        batches = list(data)
    except InputSpecError as exc:
        raise InputSpecError(f"--data {path}: {exc.message.replace('the given arrays: ', '')}", exc.hint) from exc
    dataset = Dataset(str(path), batches, None, label_source)
    if label_values is not None:
        label_values = np.asarray(label_values).reshape(-1)
        if label_values.dtype.kind not in "iu" or len(label_values) < dataset.samples:
            raise InputSpecError(f"labels {label_source}: expected {dataset.samples} integer class ids, "
                                 f"got {len(label_values)} of {label_values.dtype}", "one class id per sample")
        dataset.labels = label_values[:dataset.samples]
    return dataset


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------
class Unavailable(Exception):
    """A backend cannot open or run a variant; the message says why."""


def open_session(backend: str, variant: Variant, threads: int):
    """A session with onnxruntime's ``run(output_names, feeds)``, or :class:`Unavailable`."""
    try:
        if backend == "onnxruntime":
            return onnxruntime_session(variant.path, threads)
        try:
            from graphopt.runtime import Session
        except ImportError as exc:
            raise Unavailable(f"graphopt.runtime cannot be imported ({exc})") from exc
        return Session(variant.model, threads=threads)
    except Unavailable:
        raise
    except Exception as exc:  # the runtime is young: any failure makes the backend unavailable, not the run
        raise Unavailable(_reason(exc)) from exc


def onnxruntime_session(path: Path, threads: int):
    """onnxruntime as a user deploys it (all graph optimizations, loaded from the file), with
    intra-op spinning off: in interleaved runs a spinning idle pool steals the cores of the next
    session (a 2-thread graphopt session on 2 cores measured up to 500× slower beside one)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated exception types
        raise Unavailable(f"onnxruntime cannot load {path.name}: {_reason(exc)}") from exc


def run_session(session, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return session.run(None, feeds)
    except Exception as exc:  # onnxruntime and the runtime raise several unrelated types
        raise Unavailable("failed to run: " + _reason(exc)) from exc


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, GraphoptError) else f"{type(exc).__name__}: {text}"


# ---------------------------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Tolerance:
    atol: float | None = None
    rtol: float | None = None
    min_cosine: float | None = None

    def holds(self, max_abs: float, max_rel: float, cosine: float) -> bool:
        return ((self.atol is None or max_abs <= self.atol) and (self.rtol is None or max_rel <= self.rtol)
                and (self.min_cosine is None or cosine >= self.min_cosine))


@dataclasses.dataclass
class OutputAccuracy:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    cosine: float
    top1_agreement: float | None
    ok: bool


@dataclasses.dataclass
class Accuracy:
    outputs: list[OutputAccuracy]
    top1_accuracy: float | None

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)


def is_classifier_output(array: np.ndarray) -> bool:
    return array.dtype.kind == "f" and array.ndim == 2 and array.shape[1] >= 2


def output_accuracy(name: str, reference: np.ndarray, got: np.ndarray | None, tolerance: Tolerance) -> OutputAccuracy:
    diff = compare_output(name, reference, got, rtol=math.inf)
    agreement = None
    if got is not None and diff.ok and is_classifier_output(reference):
        agreement = float(np.mean(reference.argmax(axis=1) == got.argmax(axis=1)))
    ok = diff.ok and tolerance.holds(diff.max_abs, diff.max_rel, diff.cosine)
    return OutputAccuracy(name, diff.shape, diff.max_abs, diff.max_rel, diff.cosine, agreement, ok)


def top1_accuracy(outputs: dict[str, np.ndarray], labels: np.ndarray | None) -> float | None:
    """Share of samples whose arg-max over the first classifier-like output equals the label."""
    if labels is None:
        return None
    logits = next((v for v in outputs.values() if is_classifier_output(v) and len(v) == len(labels)), None)
    return None if logits is None else float(np.mean(logits.argmax(axis=1) == labels))


def accuracy(reference: dict[str, np.ndarray], got: dict[str, np.ndarray], labels: np.ndarray | None,
             tolerance: Tolerance) -> Accuracy:
    return Accuracy([output_accuracy(name, ref, got.get(name), tolerance) for name, ref in reference.items()],
                    top1_accuracy(got, labels))


def run_dataset(session, dataset: Dataset) -> dict[str, np.ndarray]:
    """Every output of ``session`` over all batches, joined along the sample axis."""
    names = [o.name for o in session.get_outputs()]
    parts = [run_session(session, feeds) for feeds in dataset.batches]
    return {name: np.concatenate([np.atleast_1d(p[i]) for p in parts]) for i, name in enumerate(names)}


# ---------------------------------------------------------------------------------------------
# Per-layer errors
# ---------------------------------------------------------------------------------------------
def name_pairs(original: onnx.ModelProto, candidate: onnx.ModelProto) -> dict[str, str]:
    """Candidate tensor → original tensor by the names graphopt keeps (see the module docstring)."""
    inferred = onnx.shape_inference.infer_shapes(original)
    floats = {v.name for v in list(inferred.graph.value_info) + list(inferred.graph.output)
              if v.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                  onnx.TensorProto.DOUBLE)}
    intermediate = {o for n in original.graph.node for o in n.output} & floats
    intermediate -= {o.name for o in original.graph.output}
    produced = [o for n in candidate.graph.node for o in n.output]
    pairs = {}
    for name in produced:
        stem = name[:-len(DEQUANTIZED_SUFFIX)] if name.endswith(DEQUANTIZED_SUFFIX) else None
        if stem in intermediate:
            pairs[name] = stem
        elif name in intermediate and name + DEQUANTIZED_SUFFIX not in produced:
            pairs[name] = name
    return pairs


@dataclasses.dataclass
class LayerComparison:
    variant: str
    pairing: str
    layers: list  # graphopt.quantize.LayerError, worst first

    def to_json(self) -> dict:
        return {"variant": self.variant, "pairing": self.pairing, "low_sqnr_db": LOW_SQNR_DB,
                "tensors": [layer.to_json() | {"flagged": layer.sqnr_db < LOW_SQNR_DB} for layer in self.layers]}


def compare_layers(original: Variant, variant: Variant, dataset: Dataset) -> LayerComparison:
    from graphopt.quantize import layer_errors

    pairing = "provenance" if variant.pairs is not None else "names"
    pairs = variant.pairs if variant.pairs is not None else name_pairs(original.model, variant.model)
    known = {o for n in original.model.graph.node for o in n.output}
    outputs = {o.name for o in variant.model.graph.output}
    pairs = {k: v for k, v in pairs.items() if v in known and k not in outputs}
    if not pairs:
        return LayerComparison(variant.name, pairing, [])
    # layer_errors reads only .model and .quantized_tensors of a QuantizeResult
    paired = types.SimpleNamespace(model=variant.model, quantized_tensors=pairs)
    layers = layer_errors(original.model, paired, dataset.batches, include_outputs=False)
    return LayerComparison(variant.name, pairing, sorted(layers, key=lambda layer: layer.sqnr_db))


# ---------------------------------------------------------------------------------------------
# Latency and memory
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Latency:
    threads: int
    batch: int
    runs: int
    warmup: int
    times_s: list[float]
    peak_memory_bytes: int | None

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.times_s, q) * 1e3)

    def to_json(self) -> dict:
        return {"threads": self.threads, "batch": self.batch, "runs": self.runs, "warmup": self.warmup,
                "p50_ms": _finite(self.percentile_ms(50)), "p90_ms": _finite(self.percentile_ms(90)),
                "min_ms": _finite(min(self.times_s) * 1e3), "peak_memory_bytes": self.peak_memory_bytes}


def _proc_status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak RSS growth inside a ``with`` block (see the module docstring); ``.bytes`` or None."""

    def __enter__(self):
        self.before = _proc_status_bytes("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # resets VmHWM to the current RSS
            self.resettable = True
        except OSError:
            self.resettable = False
        self.bytes = None
        return self

    def __exit__(self, *exc):
        peak = _proc_status_bytes("VmHWM")
        if self.resettable and self.before is not None and peak is not None:
            self.bytes = max(0, peak - self.before)
        return False


@dataclasses.dataclass
class Slot:
    """One variant on one backend: what it computed and how fast."""
    variant: Variant
    backend: str
    reason: str | None = None
    accuracy: Accuracy | None = None
    latency: list[Latency] = dataclasses.field(default_factory=list)

    @property
    def available(self) -> bool:
        return self.reason is None

    def to_json(self) -> dict:
        acc = None
        if self.accuracy is not None:
            acc = {"ok": self.accuracy.ok, "top1_accuracy": self.accuracy.top1_accuracy,
                   "outputs": [{k: _finite(v) if isinstance(v, float) else v
                                for k, v in dataclasses.asdict(o).items()} | {"shape": list(o.shape)}
                               for o in self.accuracy.outputs]}
        return {"variant": self.variant.name, "backend": self.backend, "available": self.available,
                "reason": self.reason, "accuracy": acc, "latency": [lat.to_json() for lat in self.latency]}


def latency_feeds(variant: Variant, batch: int, dataset: Dataset | None) -> dict[str, np.ndarray]:
    """``batch`` samples (a fixed-batch model: its own batch): the first ones of ``dataset``, else seeded."""
    batch = batch if variant.batch == "symbolic" else variant.batch
    if dataset is None:
        dims = {d: batch for s in input_specs(variant.model) for d in s.dims[:1] if isinstance(d, str)}
        return make_feeds(variant.model, dims)
    return {k: v[:batch] for k, v in dataset.batches[0].items()}


def measure_latency(slots: list[Slot], *, threads: int, runs: int, warmup: int, feeds_for,
                    progress=None) -> None:
    """Warm up each available slot on ``feeds_for(variant)``, then time ``runs`` rounds
    interleaved across the slots."""
    sessions = {}
    _prime_backends(slots, feeds_for)
    for slot in slots:
        if not slot.available:
            continue
        feeds = feeds_for(slot.variant)
        try:
            with PeakMemory() as memory:
                session = open_session(slot.backend, slot.variant, threads)
                for _ in range(warmup):
                    run_session(session, feeds)
                    _advance(progress)
        except Unavailable as exc:
            slot.reason = str(exc)
            continue
        sessions[id(slot)] = (slot, session, feeds, memory.bytes, [])
    for _ in range(runs):
        for slot, session, feeds, _, times in list(sessions.values()):
            start = time.perf_counter()
            try:
                run_session(session, feeds)
            except Unavailable as exc:
                slot.reason = str(exc)
                del sessions[id(slot)]
                continue
            times.append(time.perf_counter() - start)
            _advance(progress)
    for slot, _, feeds, memory, times in sessions.values():
        batch = len(next(iter(feeds.values()))) if feeds else 1
        slot.latency.append(Latency(threads, batch, runs, warmup, times, memory))


_primed_backends: set[str] = set()


def _prime_backends(slots: list[Slot], feeds_for) -> None:
    """Pay each backend's one-time costs (imports, JIT compilation, thread pools) once per process,
    in an untimed session, so that they land on no variant's latency or memory."""
    for slot in slots:
        if slot.available and slot.backend not in _primed_backends:
            _primed_backends.add(slot.backend)
            try:
                run_session(open_session(slot.backend, slot.variant, 1), feeds_for(slot.variant))
            except Unavailable:
                pass  # the measured session reports it


def _advance(progress) -> None:
    if progress is not None:
        progress()


def _finite(value):
    return value if value is None or math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Comparison:
    tool: str
    variants: list[Variant]
    slots: list[Slot]
    dataset: Dataset | None = None
    tolerance: Tolerance = dataclasses.field(default_factory=Tolerance)
    layers: list[LayerComparison] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.accuracy is None or s.accuracy.ok for s in self.slots)

    def to_json(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION, "tool": self.tool, "graphopt_version": graphopt.__version__,
            "reference": {"variant": self.variants[0].name, "backend": REFERENCE_BACKEND},
            "data": None if self.dataset is None else self.dataset.to_json(),
            "tolerance": dataclasses.asdict(self.tolerance), "ok": self.ok,
            "variants": [{"name": v.name, "path": str(v.path), "size_bytes": v.size_bytes, "batch": v.batch}
                         for v in self.variants],
            "results": [s.to_json() for s in self.slots],
            "layers": [layer.to_json() for layer in self.layers],
            "notes": self.notes,
        }


def compare(variants: list[Variant], dataset: Dataset, *, backends: Sequence[str] = BACKENDS,
            threads: Sequence[int] = (1,), runs: int = 20, warmup: int = 3, per_layer: bool = False,
            tolerance: Tolerance | None = None, progress=None) -> Comparison:
    """Accuracy of each variant × backend against ``variants[0]`` on onnxruntime, then latency.

    ``progress(total=N)`` is called once with the number of timed steps, then ``progress()``
    after each one.
    """
    tolerance = tolerance or Tolerance()
    try:
        reference = run_dataset(onnxruntime_session(variants[0].path, threads[0]), dataset)
    except Unavailable as exc:
        raise GraphoptError(f"the reference {variants[0].path} cannot run on onnxruntime: {exc}",
                            "the original model must run on onnxruntime, the oracle") from exc
    slots = [Slot(v, b) for v in variants for b in backends]
    for slot in slots:
        try:
            got = run_dataset(open_session(slot.backend, slot.variant, threads[0]), dataset)
        except Unavailable as exc:
            slot.reason = str(exc)
            continue
        slot.accuracy = accuracy(reference, got, dataset.labels, tolerance)
    result = Comparison("compare", variants, slots, dataset, tolerance)
    if per_layer:
        result.layers = [compare_layers(variants[0], v, dataset) for v in variants[1:]]
    if runs:
        if progress is not None:
            progress(total=len(threads) * sum(s.available for s in slots) * (warmup + runs))
        for t in threads:
            measure_latency(slots, threads=t, runs=runs, warmup=warmup,
                            feeds_for=lambda v: latency_feeds(v, 1, dataset), progress=progress)
    return result


def bench(variants: list[Variant], *, backends: Sequence[str] = BACKENDS, threads: Sequence[int] = (1,),
          batches: Sequence[int] = (1,), runs: int = 20, warmup: int = 3, progress=None) -> Comparison:
    """Latency of each variant × backend over ``threads`` × ``batches`` (seeded inputs).

    A model whose batch dim is fixed runs at that batch only, with a note.
    """
    slots = [Slot(v, b) for v in variants for b in backends]
    result = Comparison("bench", variants, slots)
    # a fixed-batch model runs once per thread count, with the first batch size
    plan = [(t, b, [s for s in slots if s.variant.batch == "symbolic" or b == batches[0]])
            for t in threads for b in batches]
    for v in variants:
        if v.batch != "symbolic" and list(batches) != [v.batch]:
            result.notes.append(f"{v.name}: the batch dim is fixed at {v.batch}; measured at batch {v.batch} only")
    if progress is not None:
        progress(total=sum(len(group) for *_, group in plan) * (warmup + runs))
    for t, b, group in plan:
        measure_latency(group, threads=t, runs=runs, warmup=warmup,
                        feeds_for=lambda v, b=b: latency_feeds(v, b, None), progress=progress)
    return result


# ---------------------------------------------------------------------------------------------
# Terminal
# ---------------------------------------------------------------------------------------------
WORST_LAYERS_SHOWN = 5


def render_comparison(c: Comparison, console) -> None:
    """The accuracy, per-layer and latency tables of ``c`` on a rich console."""
    if c.dataset is not None:
        _render_accuracy(c, console)
    for layers in c.layers:
        _render_layers(layers, console)
    _render_latency(c, console)
    for note in c.notes:
        console.print(f"[dim]note: {note}[/dim]")


def _render_accuracy(c: Comparison, console) -> None:
    from rich.table import Table

    labels = c.dataset.labels is not None
    table = Table(title=f"accuracy vs {c.variants[0].name} on onnxruntime ({c.dataset.samples} samples)",
                  title_justify="left")
    columns = ["variant", "backend", "output", "max abs", "max rel", "cosine", "top-1 agree"]
    for column in columns + (["top-1 acc"] if labels else []) + ["ok"]:
        table.add_column(column, justify="left" if column in ("variant", "backend", "output", "ok") else "right")
    for slot in c.slots:
        if slot.accuracy is None:
            table.add_row(slot.variant.name, slot.backend, f"[yellow]unavailable:[/yellow] {slot.reason}",
                          *[""] * (len(columns) - 3 + labels + 1))
            continue
        for i, o in enumerate(slot.accuracy.outputs):
            agree = "" if o.top1_agreement is None else f"{o.top1_agreement:.2%}"
            acc = [(f"{slot.accuracy.top1_accuracy:.2%}" if i == 0 and slot.accuracy.top1_accuracy is not None
                    else "")] if labels else []
            table.add_row(slot.variant.name, slot.backend, o.name, f"{o.max_abs:.3g}", f"{o.max_rel:.3g}",
                          f"{o.cosine:.6f}", agree, *acc, "[green]yes[/green]" if o.ok else "[red]NO[/red]")
    console.print(table)
    t = c.tolerance
    limits = [f"{k} {v:g}" for k, v in (("max abs ≤", t.atol), ("max rel ≤", t.rtol), ("cosine ≥", t.min_cosine))
              if v is not None]
    console.print("[dim]ok = " + (", ".join(limits) if limits else "no tolerance given (--atol/--rtol/--min-cosine)")
                  + "[/dim]")


def _render_layers(layers: LayerComparison, console) -> None:
    from rich.table import Table

    if not layers.layers:
        console.print(f"per-layer {layers.variant}: no intermediate tensor pairs with the original")
        return
    flagged = sum(layer.sqnr_db < LOW_SQNR_DB for layer in layers.layers)
    shown = layers.layers[:max(WORST_LAYERS_SHOWN, flagged)]
    table = Table(title=f"per-layer SQNR of {layers.variant} vs the original, on onnxruntime", title_justify="left",
                  caption=f"{len(shown)} worst of {len(layers.layers)} tensors, paired by {layers.pairing}; "
                          f"{flagged} below {LOW_SQNR_DB:g} dB (red)", caption_justify="left")
    for column in ("tensor", "stands for", "SQNR dB", "cosine", "max abs"):
        table.add_column(column, justify="left" if column in ("tensor", "stands for") else "right")
    for layer in shown:
        sqnr = "inf" if math.isinf(layer.sqnr_db) else f"{layer.sqnr_db:.1f}"
        table.add_row(layer.name, layer.original, f"[red]{sqnr}[/red]" if layer.sqnr_db < LOW_SQNR_DB else sqnr,
                      f"{layer.cosine:.5f}", f"{layer.max_abs:.3g}")
    console.print(table)


def _render_latency(c: Comparison, console) -> None:
    from rich.table import Table

    rows = [(slot, lat) for slot in c.slots for lat in slot.latency]
    if not rows and all(s.available for s in c.slots):
        return
    first = next((lat for _, lat in rows), None)
    title = "latency" + (f" ({first.warmup} warm-up, {first.runs} runs interleaved)" if first else "")
    table = Table(title=title, title_justify="left")
    for column in ("variant", "backend", "thr", "batch", "p50 ms", "p90 ms", "min ms", "vs ref", "peak MB",
                   "size kB"):
        table.add_column(column, justify="left" if column in ("variant", "backend") else "right")
    reference = {(lat.threads, lat.batch): lat.percentile_ms(50) for slot in c.slots[:1] for lat in slot.latency}
    for slot in c.slots:
        if not slot.latency and not slot.available:
            table.add_row(slot.variant.name, slot.backend, f"[yellow]unavailable:[/yellow] {slot.reason}",
                          *[""] * 7)
        for lat in slot.latency:
            p50 = lat.percentile_ms(50)
            ref = reference.get((lat.threads, lat.batch))
            memory = "" if lat.peak_memory_bytes is None else f"{lat.peak_memory_bytes / 1e6:.2f}"
            table.add_row(slot.variant.name, slot.backend, str(lat.threads), str(lat.batch), f"{p50:.3f}",
                          f"{lat.percentile_ms(90):.3f}", f"{min(lat.times_s) * 1e3:.3f}",
                          f"{p50 / ref:.2f}×" if ref else "", memory, f"{slot.variant.size_bytes / 1e3:.1f}")
    console.print(table)
    console.print(f"[dim]thr = threads; vs ref = p50 / p50 of {c.slots[0].variant.name} on {c.slots[0].backend}; "
                  "peak MB = RSS growth while the session is created and warmed up[/dim]")
