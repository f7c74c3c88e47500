"""graphopt's int8 GEMM / convolution kernels against onnxruntime, in the same process, interleaved.

A benchmark, not a test. For each shape and thread count, every contender runs once per round,
in rotation, after warm-up; the table reports medians. Contenders:

* GEMM: graphopt with int32 output vs onnxruntime ``MatMulInteger``; with uint8 requantized
  output vs ``QLinearMatMul``; onnxruntime fp32 ``MatMul``. graphopt runs as a ``PreparedGemm``
  (weights and epilogue validated once, as a session holds them, like onnxruntime's session);
  the plain ``qgemm()`` call, which re-validates its arguments, is timed too and reported for M <= 8.
* Conv: graphopt ``qconv2d`` with uint8 output vs ``QLinearConv``; onnxruntime fp32 ``Conv``.

Both runtimes block instead of spinning between calls (onnxruntime ``allow_spinning=0``; graphopt's
worker pool sleeps after a short spin), so that one contender's idle threads do not steal the cores
from the next one in the rotation.

    .venv/bin/python bench/kernels.py                 # full run, 1 and 2 threads
    .venv/bin/python bench/kernels.py --rounds 7      # shorter
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# numpy's OpenBLAS pool would otherwise spin on the second core after any BLAS call.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import graphopt.kernels as kernels  # noqa: E402

GEMM_SHAPES = [(1, 768, 768), (8, 768, 768), (32, 768, 768), (128, 768, 3072), (512, 512, 512),
               (1024, 1024, 1024)]
# name, (C, OC, H, W, kernel, groups, pad)
CONV_SHAPES = [
    ("3x3 64->64 @56", (64, 64, 56, 56, 3, 1, 1)),
    ("1x1 256->64 @56", (256, 64, 56, 56, 1, 1, 0)),
    ("3x3 128->128 @28", (128, 128, 28, 28, 3, 1, 1)),
    ("dw3x3 96 @56", (96, 96, 56, 56, 3, 96, 1)),
]
# Reference peaks from DESIGN.md (measured on the project's Xeon): per core.
VNNI_PEAK_TOPS = 0.65
AMX_PEAK_TOPS = 4.3
A_SCALE, A_ZP, W_SCALE, Y_SCALE, Y_ZP = 0.02, 118, 0.004, 0.5, 100
RESULTS = Path(__file__).parent / "results"


def ort_session(nodes, inputs, outputs, initializers, threads):
    graph = helper.make_graph(nodes, "bench", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def scalars():
    return [numpy_helper.from_array(np.array(A_SCALE, np.float32), "a_scale"),
            numpy_helper.from_array(np.array(A_ZP, np.uint8), "a_zp"),
            numpy_helper.from_array(np.array(W_SCALE, np.float32), "w_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "w_zp"),
            numpy_helper.from_array(np.array(Y_SCALE, np.float32), "y_scale"),
            numpy_helper.from_array(np.array(Y_ZP, np.uint8), "y_zp")]


def vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def gemm_contenders(m, k, n, threads, rng):
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    w = rng.integers(-127, 128, (k, n), dtype=np.int8)
    a_f, w_f = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    packed = kernels.pack_weights(w)
    w_init = numpy_helper.from_array(w, "w")
    a_zp = numpy_helper.from_array(np.array(A_ZP, np.uint8), "a_zp")
    mmi = ort_session([helper.make_node("MatMulInteger", ["a", "w", "a_zp"], ["y"])],
                      [vi("a", TensorProto.UINT8, [m, k])], [vi("y", TensorProto.INT32, [m, n])],
                      [w_init, a_zp], threads)
    qlmm = ort_session([helper.make_node("QLinearMatMul", ["a", "a_scale", "a_zp", "w", "w_scale",
                                                           "w_zp", "y_scale", "y_zp"], ["y"])],
                       [vi("a", TensorProto.UINT8, [m, k])], [vi("y", TensorProto.UINT8, [m, n])],
                       [w_init] + scalars(), threads)
    fp32 = ort_session([helper.make_node("MatMul", ["a", "w"], ["y"])],
                       [vi("a", TensorProto.FLOAT, [m, k])], [vi("y", TensorProto.FLOAT, [m, n])],
                       [numpy_helper.from_array(w_f, "w")], threads)
    requant = dict(scale=np.float32(A_SCALE) * np.float32(W_SCALE), output="uint8",
                   out_scale=Y_SCALE, out_zero_point=Y_ZP)
    int32 = kernels.PreparedGemm(packed, A_ZP, threads=threads)
    uint8 = kernels.PreparedGemm(packed, A_ZP, threads=threads, **requant)
    return {
        "graphopt int32": lambda: int32(a),
        "graphopt int32 qgemm()": lambda: kernels.qgemm(a, A_ZP, packed, threads=threads),
        "ort MatMulInteger": lambda: mmi.run(None, {"a": a}),
        "graphopt uint8": lambda: uint8(a),
        "ort QLinearMatMul": lambda: qlmm.run(None, {"a": a}),
        "ort fp32 MatMul": lambda: fp32.run(None, {"a": a_f}),
    }


def conv_contenders(shape, threads, rng):
    c, oc, h, w_, kernel, groups, pad = shape
    x = rng.integers(0, 256, (1, c, h, w_), dtype=np.uint8)
    w = rng.integers(-127, 128, (oc, c // groups, kernel, kernel), dtype=np.int8)
    bias = rng.integers(-2000, 2000, oc, dtype=np.int32)
    packed = kernels.pack_conv_weights(w, groups)
    attrs = dict(kernel_shape=[kernel, kernel], pads=[pad] * 4, group=groups)
    q = ort_session([helper.make_node("QLinearConv", ["x", "a_scale", "a_zp", "w", "w_scale",
                                                      "w_zp", "y_scale", "y_zp", "b"], ["y"],
                                      **attrs)],
                    [vi("x", TensorProto.UINT8, list(x.shape))],
                    [vi("y", TensorProto.UINT8, None)],
                    [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")]
                    + scalars(), threads)
    x_f = rng.standard_normal(x.shape, np.float32)
    fp32 = ort_session([helper.make_node("Conv", ["x", "w"], ["y"], **attrs)],
                       [vi("x", TensorProto.FLOAT, list(x.shape))], [vi("y", TensorProto.FLOAT, None)],
                       [numpy_helper.from_array(w.astype(np.float32), "w")], threads)
    requant = dict(scale=np.float32(A_SCALE) * np.float32(W_SCALE), output="uint8",
                   out_scale=Y_SCALE, out_zero_point=Y_ZP)
    return {
        "graphopt uint8": lambda: kernels.qconv2d(x, A_ZP, packed, padding=pad, bias=bias,
                                                  threads=threads, **requant),
        "ort QLinearConv": lambda: q.run(None, {"x": x}),
        "ort fp32 Conv": lambda: fp32.run(None, {"x": x_f}),
    }


def interleaved_medians(contenders, rounds, warmup):
    """Seconds per call: every round runs every contender once, in rotation."""
    times = {name: [] for name in contenders}
    for round_ in range(warmup + rounds):
        for name, call in contenders.items():
            start = time.perf_counter()
            call()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def conv_ops(shape):
    c, oc, h, w_, kernel, groups, pad = shape
    out_h = h + 2 * pad - kernel + 1
    out_w = w_ + 2 * pad - kernel + 1
    return 2 * oc * out_h * out_w * (c // groups) * kernel * kernel


def geomean(values):
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def run(rounds, warmup, threads_list, only=None):
    rng = np.random.default_rng(0)
    rows = []
    for threads in threads_list:
        for m, k, n in GEMM_SHAPES:
            if only and not any(o in f"{m}x{k}x{n}" for o in only):
                continue
            med = interleaved_medians(gemm_contenders(m, k, n, threads, rng), rounds, warmup)
            rows.append(dict(kind="gemm", shape=f"{m}x{k}x{n}", m=m, threads=threads,
                             ops=2 * m * k * n, seconds=med))
        for name, shape in CONV_SHAPES:
            if only and not any(o in name for o in only):
                continue
            med = interleaved_medians(conv_contenders(shape, threads, rng), rounds, warmup)
            rows.append(dict(kind="conv", shape=name, m=None, threads=threads,
                             ops=conv_ops(shape), seconds=med))
    return rows


def summarize(rows):
    def ratio(row, ours, theirs):
        return row["seconds"][theirs] / row["seconds"][ours]

    one = [r for r in rows if r["threads"] == 1]
    gemm1 = [r for r in one if r["kind"] == "gemm"]
    conv1 = [r for r in one if r["kind"] == "conv"]
    scaling = []
    for r in rows:
        if r["kind"] == "gemm" and r["threads"] == 2 and r["m"] >= 128:
            base = next(b for b in gemm1 if b["shape"] == r["shape"])
            scaling.append(base["seconds"]["graphopt int32"] / r["seconds"]["graphopt int32"])
    return {
        "gemm_vs_MatMulInteger_1t": geomean([ratio(r, "graphopt int32", "ort MatMulInteger")
                                             for r in gemm1]),
        "gemm_vs_MatMulInteger_1t_m_le_8": geomean([ratio(r, "graphopt int32", "ort MatMulInteger")
                                                    for r in gemm1 if r["m"] <= 8]),
        "gemm_qgemm_call_vs_MatMulInteger_1t_m_le_8": geomean(
            [ratio(r, "graphopt int32 qgemm()", "ort MatMulInteger") for r in gemm1 if r["m"] <= 8]),
        "gemm_vs_QLinearMatMul_1t": geomean([ratio(r, "graphopt uint8", "ort QLinearMatMul")
                                             for r in gemm1]),
        "conv_vs_QLinearConv_1t": geomean([ratio(r, "graphopt uint8", "ort QLinearConv")
                                           for r in conv1]),
        "two_thread_speedup_m_ge_128": geomean(scaling),
    }


def markdown(rows, summary, meta):
    lines = [f"# int8 kernels vs onnxruntime ({meta['isa']} path, onnxruntime {meta['onnxruntime']})",
             "",
             f"{meta['rounds']} interleaved rounds after {meta['warmup']} warm-up, medians; "
             f"CPU: {meta['cpu']}. GOPS = 2·MACs / median time. Ratio > 1: graphopt faster. "
             f"% peak uses DESIGN.md's per-core reference peaks (VNNI {VNNI_PEAK_TOPS} TOPS, "
             f"AMX {AMX_PEAK_TOPS} TOPS) × threads. The machine is shared: quote ratios.", "",
             "| kind | shape | thr | graphopt GOPS | ort int8 GOPS | ratio | graphopt uint8 vs "
             "ort QLinear | ort fp32 GOPS | % VNNI peak | % AMX peak |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, ops = r["seconds"], r["ops"]
        if r["kind"] == "gemm":
            ours, theirs = s["graphopt int32"], s["ort MatMulInteger"]
            q_ratio = s["ort QLinearMatMul"] / s["graphopt uint8"]
            fp32 = s["ort fp32 MatMul"]
        else:
            ours, theirs = s["graphopt uint8"], s["ort QLinearConv"]
            q_ratio = theirs / ours
            fp32 = s["ort fp32 Conv"]
        gops = ops / ours / 1e9
        lines.append(f"| {r['kind']} | {r['shape']} | {r['threads']} | {gops:.0f} | "
                     f"{ops / theirs / 1e9:.0f} | {theirs / ours:.2f} | {q_ratio:.2f} | "
                     f"{ops / fp32 / 1e9:.0f} | "
                     f"{100 * gops / (1000 * VNNI_PEAK_TOPS * r['threads']):.0f}% | "
                     f"{100 * gops / (1000 * AMX_PEAK_TOPS * r['threads']):.0f}% |")
    lines += ["", "GEMM rows compare int32 output with MatMulInteger (the ratio column) and uint8 "
              "requantized output with QLinearMatMul, graphopt as a PreparedGemm; conv rows "
              "compare uint8 output (qconv2d) with QLinearConv in both columns.", "", "## Targets (issue 4)", "",
              "| target | measured | met |", "|---|---|---|"]
    targets = [("GEMM geomean vs MatMulInteger, 1 thread", "gemm_vs_MatMulInteger_1t", 1.0),
               ("GEMM geomean vs MatMulInteger, M ≤ 8, 1 thread",
                "gemm_vs_MatMulInteger_1t_m_le_8", 1.5),
               ("conv geomean vs QLinearConv, 1 thread", "conv_vs_QLinearConv_1t", 1.0),
               ("2 threads / 1 thread, GEMM M ≥ 128", "two_thread_speedup_m_ge_128", 1.6)]
    for label, key, goal in targets:
        value = summary[key]
        lines.append(f"| {label} ≥ {goal} | {value:.2f} | {'yes' if value >= goal else 'no'} |")
    lines.append(f"| (info) GEMM geomean uint8 vs QLinearMatMul, 1 thread | "
                 f"{summary['gemm_vs_QLinearMatMul_1t']:.2f} | |")
    lines.append(f"| (info) GEMM geomean vs MatMulInteger, M ≤ 8, 1 thread, plain qgemm() call | "
                 f"{summary['gemm_qgemm_call_vs_MatMulInteger_1t_m_le_8']:.2f} | |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", nargs="+", metavar="SUBSTRING",
                        help="run only the shapes whose name contains one of these "
                             "(e.g. 1x768 dw3x3); for development, targets need every shape")
    args = parser.parse_args(argv)
    meta = dict(isa=kernels.isa(), onnxruntime=ort.__version__, rounds=args.rounds,
                warmup=args.warmup, cpu=cpu_name(),
                python=sys.version.split()[0])
    rows = run(args.rounds, args.warmup, args.threads, args.only)
    if args.only:
        for row in rows:
            ours = "graphopt int32" if row["kind"] == "gemm" else "graphopt uint8"
            theirs = "ort MatMulInteger" if row["kind"] == "gemm" else "ort QLinearConv"
            print(f"{row['kind']} {row['shape']} thr={row['threads']}: "
                  f"{row['seconds'][ours] * 1e6:.0f} us, ratio "
                  f"{row['seconds'][theirs] / row['seconds'][ours]:.2f}")
        return
    summary = summarize(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels.json").write_text(json.dumps(dict(meta=meta, rows=rows, summary=summary),
                                                      indent=1))
    table = markdown(rows, summary, meta)
    (args.out / "kernels.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
