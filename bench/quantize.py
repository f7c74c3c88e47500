"""graphopt's int8 quantization against onnxruntime.quantization.quantize_static, same models, same data.

For each model: both tools quantize from the same calibration .npz (graphopt: ``graphopt.quantize``
with its defaults, minmax, U8S8 per channel; onnxruntime: ``quantize_static`` with QDQ, QUInt8
activations, QInt8 per-channel weights, MinMax — the equivalent settings). Each tool runs in a fresh
child process; its wall time and the growth of that process's peak RSS (VmHWM, after the
imports and the model load) are recorded. Then the fp32 model and both int8 models run on
onnxruntime (all graph optimizations on), interleaved in the same process after warm-up, at 1 and
2 threads: medians, and the int8/fp32 ratio. Accuracy: digits-cnn top-1 on its labelled test split;
yolo-head the top-20 detections' classes and the largest score error; the others the smallest
cosine similarity to fp32 over held-out inputs; PP-OCRv4 det (on synthetic pages of random
words) also the IoU of the text maps binarised at 0.3, as its DB post-processing does.
Writes bench/results/quantize.{md,json}.

    python bench/quantize.py [--models digits-cnn,resnet18,...] [--ppocr PATH/ch_PP-OCRv4_det_infer.onnx]

PP-OCRv4 det is found in an installed ``rapidocr_onnxruntime`` package, or given with ``--ppocr``.
``bert-mini:dynamic`` compares ``graphopt.quantize(mode="dynamic")`` with onnxruntime's
``quantize_dynamic`` (per-channel QInt8 weights; no calibration data).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

RESULTS = Path(__file__).parent / "results"
# NAME[:dynamic]: ":dynamic" compares --quantize dynamic with onnxruntime's quantize_dynamic instead.
ALL_MODELS = ["digits-cnn", "resnet18", "mobilenetv3", "yolo-head", "bert-mini", "bert-mini:dynamic", "ppocr-det"]
CALIBRATION_SAMPLES = {"digits-cnn": None, "resnet18": 32, "mobilenetv3": 32, "yolo-head": 16, "bert-mini": 64,
                       "ppocr-det": 8}
# Batches both tools calibrate with (a symbolic batch axis); PP-OCR's 480x480 activations are large.
BATCH_SIZE = {"ppocr-det": 2}
HELD_OUT = 4
# At least ROUNDS interleaved runs each, more for fast models: about LATENCY_SECONDS per variant, so a
# burst from another process on the shared cores cannot move a 2 ms model's median.
ROUNDS = 15
MAX_ROUNDS = 300
LATENCY_SECONDS = 1.5
PPOCR_SIZE = 480


# ---- data ------------------------------------------------------------------------------------

def zoo_inputs(name: str, seed: int) -> dict[str, np.ndarray]:
    from graphopt.models import get_entry
    return get_entry(name).sample_inputs(seed=seed)


def ppocr_inputs(seed: int) -> dict[str, np.ndarray]:
    """A synthetic page: lines of random lowercase words, black on white, normalised as PP-OCR does."""
    from PIL import Image, ImageDraw, ImageFont
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (PPOCR_SIZE, PPOCR_SIZE), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=int(rng.integers(18, 30)))
    y = 10
    while y < PPOCR_SIZE - 30:
        words = [''.join(chr(c) for c in rng.integers(97, 123, rng.integers(2, 9))) for _ in range(rng.integers(2, 6))]
        draw.text((int(rng.integers(5, 60)), y), " ".join(words), fill=(0, 0, 0), font=font)
        y += int(rng.integers(30, 50))
    pixels = (np.asarray(image, np.float32) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return {"x": pixels.transpose(2, 0, 1)[None].astype(np.float32)}


def inputs(name: str, seed: int) -> dict[str, np.ndarray]:
    return ppocr_inputs(seed) if name == "ppocr-det" else zoo_inputs(name, seed)


def write_calibration(name: str, folder: Path) -> Path:
    """One .npz, first axis = samples, that both tools read."""
    from graphopt.models import DIGITS_CALIB
    if name == "digits-cnn":
        return DIGITS_CALIB
    batches = [inputs(name, seed) for seed in range(1, 1 + CALIBRATION_SAMPLES[name])]
    # bert-mini's sampler draws 2 rows per seed: the cut keeps the sample count the same for every model.
    arrays = {key: np.concatenate([b[key] for b in batches])[:CALIBRATION_SAMPLES[name]] for key in batches[0]}
    path = folder / f"{name}.calib.npz"
    np.savez(path, **arrays)
    return path


def model_path(name: str, folder: Path, ppocr: str | None) -> Path | None:
    from graphopt.models import DIGITS_ONNX
    if name == "digits-cnn":
        return DIGITS_ONNX
    if name == "ppocr-det":
        if ppocr:
            return Path(ppocr)
        try:
            import rapidocr_onnxruntime
        except ImportError:
            return None
        return Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx"
    from graphopt.export import export_model
    return export_model(name, folder / f"{name}.onnx").path


# ---- quantizers, each in a child process --------------------------------------------------------

def _peak_mb() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent (which holds torch and the
    # exported models) into a spawned child; VmHWM starts afresh with the child's own memory.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _graphopt_job(model: str, calib: str, out: str, batch_size: int, mode: str) -> dict:
    import graphopt
    from graphopt.quantize import quantize
    original = graphopt.load_model(model)
    before, start = _peak_mb(), time.perf_counter()
    result = quantize(original, calib if mode == "static" else None, batch_size=batch_size, mode=mode)
    graphopt.save_model(result.model, out)
    return {"seconds": time.perf_counter() - start, "peak_mb": _peak_mb() - before, "notes": result.notes}


class _NpzReader:
    """onnxruntime's CalibrationDataReader over the same .npz, in the batches graphopt uses."""

    def __init__(self, model: onnx.ModelProto, calib: str, batch_size: int):
        from graphopt.calibration import calibration_data
        self.batches = iter(calibration_data(calib, model, batch_size=batch_size))

    def get_next(self):
        return next(self.batches, None)


def _onnxruntime_job(model: str, calib: str, out: str, batch_size: int, mode: str) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    before, start = _peak_mb(), time.perf_counter()
    try:
        if mode == "dynamic":
            quantize_dynamic(model, out, per_channel=True, weight_type=QuantType.QInt8)
        else:
            quantize_static(model, out, _NpzReader(onnx.load(model), calib, batch_size), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    except Exception as exc:  # report what the tool did, whatever it raised
        return {"error": str(exc).strip().splitlines()[0][:160]}
    return {"seconds": time.perf_counter() - start, "peak_mb": _peak_mb() - before}


def in_child(job, *args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(job, args)


# ---- accuracy and latency ------------------------------------------------------------------------

def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def accuracy(name: str, paths: dict[str, Path]) -> dict[str, str]:
    from graphopt.verify import cosine_similarity
    sessions = {k: session(p, 1) for k, p in paths.items()}
    if name == "digits-cnn":
        from graphopt.models import load_digits_split
        test = load_digits_split("test")
        return {k: f"top-1 {100 * np.mean(s.run(None, {'image': test['image']})[0].argmax(1) == test['label']):.2f}%"
                for k, s in sessions.items()}
    held = [inputs(name, 100 + i) for i in range(HELD_OUT)]
    reference = [sessions["fp32"].run(None, f)[0] for f in held]
    found = {"fp32": "reference"}
    for k in paths:
        if k == "fp32":
            continue
        outs = [sessions[k].run(None, f)[0] for f in held]
        if name == "yolo-head":
            top = [np.argsort(-r[0, :, 4:].max(1))[:20] for r in reference]
            same = np.mean([np.mean(r[0, t, 4:].argmax(1) == o[0, t, 4:].argmax(1))
                            for r, o, t in zip(reference, outs, top)])
            err = max(float(np.abs(r[0, :, 4:] - o[0, :, 4:]).max()) for r, o in zip(reference, outs))
            found[k] = f"top-20 classes {100 * same:.0f}%, score err {err:.3f}"
        elif name == "ppocr-det":  # DB post-processing binarises the text map at 0.3
            iou = min(np.logical_and(r > 0.3, o > 0.3).sum() / max(np.logical_or(r > 0.3, o > 0.3).sum(), 1)
                      for r, o in zip(reference, outs))
            cosine = min(cosine_similarity(r, o) for r, o in zip(reference, outs))
            found[k] = f"text-map IoU {iou:.3f}, cosine {cosine:.4f}"
        else:
            found[k] = f"cosine {min(cosine_similarity(r, o) for r, o in zip(reference, outs)):.4f}"
    return found


def latency(name: str, paths: dict[str, Path], threads: int) -> dict[str, float]:
    feeds = inputs(name, 100)
    sessions = {k: session(p, threads) for k, p in paths.items()}
    for s in sessions.values():
        s.run(None, feeds)
    start = time.perf_counter()
    sessions["fp32"].run(None, feeds)
    rounds = int(np.clip(LATENCY_SECONDS / (time.perf_counter() - start), ROUNDS, MAX_ROUNDS))
    times = {k: [] for k in sessions}
    keys = list(sessions)
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:  # rotate who runs first
            start = time.perf_counter()
            sessions[k].run(None, feeds)
            times[k].append(time.perf_counter() - start)
    return {k: round(1e3 * float(np.median(v)), 3) for k, v in times.items()}


def measure(entry: str, folder: Path, ppocr: str | None) -> dict | None:
    name, _, mode = entry.partition(":")
    mode = mode or "static"
    path = model_path(name, folder, ppocr) if not (folder / f"{name}.onnx").is_file() else folder / f"{name}.onnx"
    if path is None or not Path(path).is_file():
        print(f"{name}: model not found, skipped")
        return None
    calib = write_calibration(name, folder)
    outs = {"graphopt": folder / f"{name}.{mode}.graphopt.onnx", "onnxruntime": folder / f"{name}.{mode}.ort.onnx"}
    batch = BATCH_SIZE.get(name, 32)
    row = {"model": entry, "calibration": str(calib.name) if mode == "static" else None,
           "graphopt": in_child(_graphopt_job, str(path), str(calib), str(outs["graphopt"]), batch, mode),
           "onnxruntime": in_child(_onnxruntime_job, str(path), str(calib), str(outs["onnxruntime"]), batch, mode)}
    paths = {"fp32": Path(path), "graphopt": outs["graphopt"]}
    if "error" not in row["onnxruntime"]:
        paths["onnxruntime"] = outs["onnxruntime"]
    row["accuracy"] = accuracy(name, paths)
    row["latency_ms"] = {f"{t} thread{'s' if t > 1 else ''}": latency(name, paths, t) for t in (1, 2)}
    print(json.dumps(row))
    return row


# ---- report -------------------------------------------------------------------------------------

def isa() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    found = [f for f in ("amx_tile", "avx512_vnni", "avx2") if f in flags]
    return f"{platform.processor() or platform.machine()}, flags: {', '.join(found)}"


def _tool_cell(entry: dict) -> str:
    if "error" in entry:
        return f"failed: {entry['error']}"
    return f"{entry['seconds']:.2f} s, +{entry['peak_mb']:.0f} MB"


def _latency_cell(ms: dict, key: str) -> str:
    if key not in ms:
        return "-"
    return f"{ms[key]:.3g}" if key == "fp32" else f"{ms[key]:.3g} ({ms[key] / ms['fp32']:.2f}x)"


def markdown(rows: list[dict]) -> str:
    lines = ["# int8 quantization: graphopt vs onnxruntime.quantization.quantize_static", "",
             f"onnxruntime {ort.__version__}, {isa()} (the int8 path onnxruntime's MLAS picks: AVX-512 VNNI U8S8). "
             "Shared 2-core machine (other jobs ran at the same time): read the ratios, not the milliseconds, and "
             "the 1-thread rows first. Quantize: wall time and growth of the child process's peak RSS. Latency: "
             f"median of {ROUNDS}-{MAX_ROUNDS} interleaved runs (about {LATENCY_SECONDS} s per variant), "
             "onnxruntime with all graph optimizations; (ratio to fp32).", "",
             "| model | quantize: graphopt | quantize: onnxruntime | accuracy fp32 | graphopt int8 "
             "| onnxruntime int8 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        acc = r["accuracy"]
        lines.append(f"| {r['model']} | {_tool_cell(r['graphopt'])} | {_tool_cell(r['onnxruntime'])} | "
                     f"{acc['fp32']} | {acc['graphopt']} | {acc.get('onnxruntime', '-')} |")
    lines += ["", "| model | threads | fp32 ms | graphopt int8 ms | onnxruntime int8 ms |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        for threads, ms in r["latency_ms"].items():
            lines.append(f"| {r['model']} | {threads.split()[0]} | {_latency_cell(ms, 'fp32')} | "
                         f"{_latency_cell(ms, 'graphopt')} | {_latency_cell(ms, 'onnxruntime')} |")
    notes = [f"- {r['model']}: {note}" for r in rows for note in r["graphopt"].get("notes", [])]
    if notes:
        lines += ["", "graphopt's notes:", ""] + notes
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ALL_MODELS))
    parser.add_argument("--ppocr", help="path to ch_PP-OCRv4_det_infer.onnx")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for name in args.models.split(",") if (row := measure(name, Path(tmp), args.ppocr))]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quantize.json").write_text(json.dumps({"onnxruntime": ort.__version__, "isa": isa(),
                                                       "rows": rows}, indent=1) + "\n")
    (RESULTS / "quantize.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
