"""Pruning: what each method costs in accuracy, and what channel pruning buys in latency.

1. digits-cnn (shipped): top-1 on its labelled test split at 50/70/90% unstructured sparsity and
   2:4, for magnitude, Wanda and OBS (calibrated on the shipped calibration split), with the default
   exclusions (first, last and tiny layers dense) and with every layer pruned.
2. resnet18 and mobilenetv3 (exported from the zoo, random init): channel pruning at 25% and 50%;
   MACs and parameters before/after (``graphopt.inspect``), and latency of the dense and pruned
   models on onnxruntime (all graph optimizations on) and, when it loads, graphopt's runtime,
   interleaved in one process after warm-up, at 1 and 2 threads: medians and pruned/dense ratios.

Writes bench/results/prune.{md,json}.

    python bench/prune.py [--models resnet18,mobilenetv3] [--seconds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from graphopt import model_io
from graphopt.inspect import inspect_model
from graphopt.models import DIGITS_CALIB, DIGITS_ONNX, DIGITS_TEST
from graphopt.oracle import ort_session
from graphopt.prune import prune

RESULTS = Path(__file__).parent / "results"
LEVELS = (0.5, 0.7, 0.9)
METHODS = ("magnitude", "wanda", "obs")
CHANNEL_RATIOS = (0.25, 0.5)
ROUNDS = 10
MAX_ROUNDS = 200


def digits_accuracy() -> list[dict]:
    model = model_io.load_model(DIGITS_ONNX)
    with np.load(DIGITS_TEST) as data:
        images, labels = data["image"], data["label"]

    def top1(m: onnx.ModelProto) -> float:
        return float((ort_session(m).run(None, {"image": images})[0].argmax(1) == labels).mean() * 100)

    baseline = top1(model)
    rows = []
    for layers, exclude in (("default", ("first", "last", "tiny")), ("all", ())):
        for method in METHODS:
            for pattern, level in [("unstructured", lv) for lv in LEVELS] + [("2:4", 0.5)]:
                start = time.perf_counter()
                result = prune(model, level, pattern=pattern, method=method, exclude=exclude,
                               calibration=DIGITS_CALIB if method != "magnitude" else None)
                seconds = time.perf_counter() - start
                accuracy = top1(result.model)
                rows.append({"layers": layers, "method": method, "pattern": pattern, "target": level,
                             "sparsity": round(result.sparsity, 4), "top1": round(accuracy, 2),
                             "drop": round(baseline - accuracy, 2), "seconds": round(seconds, 3),
                             "baseline": round(baseline, 2)})
                print(rows[-1])
    return rows


def sessions_for(paths: dict[str, onnx.ModelProto], threads: int) -> dict[str, object]:
    found = {f"ort {k}": ort_session(m, threads=threads, optimize=True) for k, m in paths.items()}
    try:
        from graphopt.runtime import Session
        found |= {f"graphopt {k}": Session(m, threads=threads) for k, m in paths.items()}
    except Exception as exc:  # the runtime is optional here: report what ran
        print(f"graphopt runtime skipped: {exc}")
    return found


def latency(models: dict[str, onnx.ModelProto], threads: int, seconds: float) -> dict[str, float]:
    feeds = {"image": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    sessions = sessions_for(models, threads)
    for s in sessions.values():
        s.run(None, feeds)
    start = time.perf_counter()
    for s in sessions.values():
        s.run(None, feeds)
    rounds = int(np.clip(seconds / (time.perf_counter() - start), ROUNDS, MAX_ROUNDS))
    keys = list(sessions)
    times = {k: [] for k in keys}
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:  # rotate who runs first
            start = time.perf_counter()
            sessions[k].run(None, feeds)
            times[k].append(time.perf_counter() - start)
    return {k: round(1e3 * float(np.median(v)), 3) for k, v in times.items()}


def channel_latency(name: str, folder: Path, seconds: float) -> dict:
    from graphopt.export import export_model
    dense = model_io.load_model(export_model(name, folder / f"{name}.onnx").path)
    models = {"dense": dense}
    facts = {"dense": inspect_model(dense)}
    for ratio in CHANNEL_RATIOS:
        result = prune(dense, ratio, pattern="channel")
        onnx.checker.check_model(result.model, full_check=True)
        models[f"{ratio:.0%}"] = result.model
        facts[f"{ratio:.0%}"] = inspect_model(result.model)
    entry = {"model": name, "variants": {}, "load": " / ".join(f"{x:.1f}" for x in os.getloadavg())}
    for key, info in facts.items():
        entry["variants"][key] = {"macs": info["macs"], "params": info["num_params"]}
    for threads in (1, 2):
        entry[f"ms_{threads}t"] = latency(models, threads, seconds)
        print(name, threads, entry[f"ms_{threads}t"])
    return entry


def markdown(digits: list[dict], channels: list[dict]) -> str:
    lines = ["# Pruning", "", f"Machine: {platform.processor() or platform.machine()}, onnxruntime CPU, batch 1. "
             "Regenerate: `python bench/prune.py`.", "",
             f"## digits-cnn top-1 (%), baseline {digits[0]['baseline']:.2f}, no retraining",
             "", "Calibrated on models/digits_calib.npz (200 samples), tested on models/digits_test.npz (360).",
             "`default`: first, last and tiny layers dense (conv2 and fc1 pruned, 37k of 38k weights); "
             "`all`: every layer pruned. Drop in points.", "",
             "| layers | pattern | target | magnitude | wanda | obs |", "|---|---|---|---|---|---|"]
    for layers in ("default", "all"):
        for pattern, level in [("unstructured", lv) for lv in LEVELS] + [("2:4", 0.5)]:
            cells = []
            for method in METHODS:
                row = next(r for r in digits if (r["layers"], r["method"], r["pattern"], r["target"])
                           == (layers, method, pattern, level))
                cells.append(f"{row['top1']:.2f} ({-row['drop']:+.2f})")
            lines.append(f"| {layers} | {pattern} | {level:.0%} | " + " | ".join(cells) + " |")
    lines += ["", "## Channel pruning: MACs removed vs latency (onnxruntime, all optimizations; graphopt runtime)",
              "", "Medians of interleaved runs, ms; ratio = pruned / dense of the same engine and threads. "
              f"Load average during the run: {channels[0]['load'] if channels else '-'} on {os.cpu_count()} cores "
              "(a shared machine: the 2-thread column competes with other jobs).", "",
              "| model | variant | MACs (G) | MACs ratio | params (M) | engine | 1 thread ms | ratio | 2 threads ms | ratio |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for entry in channels:
        dense = entry["variants"]["dense"]
        engines = sorted({k.split(" ")[0] for k in entry["ms_1t"]})
        for variant, info in entry["variants"].items():
            for engine in engines:
                key, base = f"{engine} {variant}", f"{engine} dense"
                one, two = entry["ms_1t"].get(key), entry["ms_2t"].get(key)
                params = info["params"] / 1e6
                lines.append(f"| {entry['model']} | {variant} | {info['macs'] / 1e9:.3f} | "
                             f"{info['macs'] / dense['macs']:.2f} | {params:.2f} | {engine} | {one:.2f} | "
                             f"{one / entry['ms_1t'][base]:.2f} | {two:.2f} | {two / entry['ms_2t'][base]:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenetv3")
    parser.add_argument("--seconds", type=float, default=3.0, help="latency budget per model and thread count")
    args = parser.parse_args()
    digits = digits_accuracy()
    channels = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in filter(None, args.models.split(",")):
            channels.append(channel_latency(name, Path(tmp), args.seconds))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "prune.json").write_text(json.dumps({"digits": digits, "channels": channels}, indent=1))
    (RESULTS / "prune.md").write_text(markdown(digits, channels))
    print((RESULTS / "prune.md").read_text())


if __name__ == "__main__":
    main()
