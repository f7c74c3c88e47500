"""graphopt compare / bench: metrics on constructed cases with known answers, exit codes, the JSON schema."""
import json
import mmap
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.compare import (
    Dataset,
    PeakMemory,
    Tolerance,
    Variant,
    bench,
    compare,
    load_dataset,
    name_pairs,
    output_accuracy,
    top1_accuracy,
)
from graphopt.errors import InputSpecError

W = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]], np.float32)


def classifier(offset: float = 0.0, op: str = "Relu", batch="batch") -> onnx.ModelProto:
    """logits = op(x @ W) + offset, x: [batch, 4]; ``hidden`` is the intermediate tensor."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["hidden"], name="matmul"),
             helper.make_node(op, ["hidden"], ["act"], name="act"),
             helper.make_node("Add", ["act", "offset"], ["logits"], name="offset")]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.array(offset, np.float32), "offset")]
    graph = helper.make_graph(nodes, "classifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def write(tmp_path, name: str, model: onnx.ModelProto):
    path = tmp_path / name
    onnx.save_model(model, str(path))
    return path


@pytest.fixture
def data(tmp_path):
    """8 samples whose class is the largest of the first 3 features; labels wrong for the last 2."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 1.0, (8, 4)).astype(np.float32)
    label = x[:, :3].argmax(axis=1)
    label[-2:] = (label[-2:] + 1) % 3
    path = tmp_path / "data.npz"
    np.savez(path, x=x, label=label)
    return path


def test_output_metrics_of_a_known_offset():
    ref = np.array([[1.0, 2.0, 4.0], [3.0, 1.0, 0.0]], np.float32)
    got = ref + 0.5
    o = output_accuracy("y", ref, got, Tolerance())
    assert o.max_abs == pytest.approx(0.5) and o.max_rel == pytest.approx(0.5 / 4.0)
    expected_cosine = float(ref.ravel() @ got.ravel() / (np.linalg.norm(ref) * np.linalg.norm(got)))
    assert o.cosine == pytest.approx(expected_cosine) and o.top1_agreement == 1.0 and o.ok
    assert not output_accuracy("y", ref, got, Tolerance(atol=0.4)).ok
    assert output_accuracy("y", ref, got, Tolerance(atol=0.5, rtol=0.125)).ok
    assert not output_accuracy("y", ref, got, Tolerance(min_cosine=0.9999)).ok


def test_top1_agreement_and_accuracy_of_a_known_classifier():
    ref = np.eye(4, 3, dtype=np.float32)  # arg-max 0, 1, 2, 0
    got = ref.copy()
    got[3] = [0, 0, 1]  # the last sample now says 2
    assert output_accuracy("y", ref, got, Tolerance()).top1_agreement == 0.75
    assert top1_accuracy({"y": got}, np.array([0, 1, 1, 0])) == 0.5  # got says 0, 1, 2, 2
    assert top1_accuracy({"y": got}, None) is None
    assert output_accuracy("s", np.ones(4, np.float32), np.ones(4, np.float32), Tolerance()).top1_agreement is None


def test_compare_in_process_finds_the_offset_and_the_labels(tmp_path, data):
    original = Variant("orig", write(tmp_path, "orig.onnx", classifier()))
    shifted = Variant("shifted", write(tmp_path, "shifted.onnx", classifier(offset=0.25)))
    dataset = load_dataset(data, original.model)
    assert dataset.samples == 8 and dataset.label_source.endswith(":label")
    result = compare([original, shifted], dataset, backends=["onnxruntime"], runs=3, warmup=1,
                     tolerance=Tolerance(atol=0.1))
    by_name = {s.variant.name: s for s in result.slots}
    assert by_name["orig"].accuracy.outputs[0].max_abs == 0 and by_name["orig"].accuracy.ok
    out = by_name["shifted"].accuracy.outputs[0]
    assert out.max_abs == pytest.approx(0.25, abs=1e-6) and out.top1_agreement == 1.0 and not out.ok
    assert by_name["shifted"].accuracy.top1_accuracy == pytest.approx(6 / 8)
    assert not result.ok
    latency = by_name["shifted"].latency[0]
    assert latency.runs == 3 and len(latency.times_s) == 3 and latency.batch == 1


def test_per_layer_pairs_by_name_and_dequantized_convention(tmp_path, data):
    original = classifier()
    candidate = classifier(op="Sigmoid")  # 'act' changes, 'hidden' does not
    pairs = name_pairs(original, candidate)
    assert pairs == {"hidden": "hidden", "act": "act"}
    renamed = classifier()
    renamed.graph.node[1].output[0] = "act_dequantized"
    renamed.graph.node[2].input[0] = "act_dequantized"
    assert name_pairs(original, renamed) == {"hidden": "hidden", "act_dequantized": "act"}
    variants = [Variant("orig", write(tmp_path, "o.onnx", original)),
                Variant("sig", write(tmp_path, "s.onnx", candidate))]
    result = compare(variants, load_dataset(data, original), backends=["onnxruntime"], runs=0, per_layer=True)
    layers = {layer.name: layer for layer in result.layers[0].layers}
    assert np.isinf(layers["hidden"].sqnr_db) and layers["act"].sqnr_db < 20
    assert result.layers[0].layers[0].name == "act"  # worst first
    flagged = {t["name"]: t["flagged"] for t in result.to_json()["layers"][0]["tensors"]}
    assert flagged == {"act": True, "hidden": False}


def test_graphopt_backend_unavailable_is_reported_not_faked(tmp_path, data, monkeypatch):
    monkeypatch.setitem(sys.modules, "graphopt.runtime", None)  # as if the runtime were not built
    variants = [Variant("orig", write(tmp_path, "o.onnx", classifier()))]
    result = compare(variants, load_dataset(data, variants[0].model), runs=2, warmup=0)
    slot = next(s for s in result.slots if s.backend == "graphopt")
    assert not slot.available and "graphopt.runtime cannot be imported" in slot.reason
    assert slot.accuracy is None and slot.latency == []
    report = result.to_json()["results"][1]
    assert report == {"variant": "orig", "backend": "graphopt", "available": False, "reason": slot.reason,
                      "accuracy": None, "latency": []}


def test_unsupported_op_on_graphopt_is_unavailable_through_the_cli(tmp_path, data, cli):
    model = classifier(op="Hardmax")  # onnxruntime has it, graphopt's runtime does not
    source = write(tmp_path, "hardmax.onnx", model)
    proc = cli("compare", source, "--data", data, "--runs", "1", "--warmup", "0", "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    graphopt_result = next(r for r in results if r["backend"] == "graphopt")
    assert graphopt_result["available"] is False and graphopt_result["reason"]
    assert "unavailable" in proc.stdout


def test_tolerance_breach_exits_1_and_json_schema(tmp_path, data, cli):
    original = write(tmp_path, "orig.onnx", classifier())
    shifted = write(tmp_path, "shifted.onnx", classifier(offset=0.25))
    out = tmp_path / "r.json"
    proc = cli("compare", original, shifted, "--data", data, "--backends", "onnxruntime", "--runs", "2",
               "--warmup", "1", "--threads", "1,2", "--per-layer", "--atol", "0.1", "--json", out)
    assert proc.returncode == 1 and "tolerance broken by shifted on onnxruntime" in proc.stderr
    report = json.loads(out.read_text())
    assert report["schema_version"] == 1 and report["tool"] == "compare" and report["ok"] is False
    assert set(report) == {"schema_version", "tool", "graphopt_version", "reference", "data", "tolerance", "ok",
                           "variants", "results", "layers", "notes"}
    assert report["reference"] == {"variant": "orig", "backend": "onnxruntime"}
    assert report["data"]["samples"] == 8 and report["data"]["inputs"] == {"x": [8, 4]}
    assert report["tolerance"] == {"atol": 0.1, "rtol": None, "min_cosine": None}
    assert [v["name"] for v in report["variants"]] == ["orig", "shifted"]
    assert all(isinstance(v["size_bytes"], int) and v["batch"] == "symbolic" for v in report["variants"])
    for result in report["results"]:
        assert set(result) == {"variant", "backend", "available", "reason", "accuracy", "latency"}
        assert set(result["accuracy"]) == {"ok", "top1_accuracy", "outputs"}
        output = result["accuracy"]["outputs"][0]
        assert set(output) == {"name", "shape", "max_abs", "max_rel", "cosine", "top1_agreement", "ok"}
        assert output["shape"] == [8, 3] and isinstance(output["cosine"], float)
        assert [lat["threads"] for lat in result["latency"]] == [1, 2]
        for lat in result["latency"]:
            assert set(lat) == {"threads", "batch", "runs", "warmup", "p50_ms", "p90_ms", "min_ms",
                                "peak_memory_bytes"}
            assert lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"]
    assert report["layers"][0]["pairing"] == "names"
    proc = cli("compare", original, shifted, "--data", data, "--backends", "onnxruntime", "--runs", "0",
               "--atol", "0.3", "--json", "-")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"] is True


@pytest.mark.parametrize("args, message", [
    (["--data", "missing.npz"], "no such file"),
    (["--backends", "onnxruntime,tensorrt"], "unknown backend tensorrt"),
    (["--threads", "0"], "--threads '0'"),
])
def test_bad_options_are_one_line_exit_2(tmp_path, data, cli, args, message):
    source = write(tmp_path, "m.onnx", classifier())
    options = dict(zip(args[::2], args[1::2]))
    options.setdefault("--data", str(data))
    flat = [item for pair in options.items() for item in pair]
    proc = cli("compare", source, *flat, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_data_that_does_not_match_the_model_is_refused(tmp_path):
    model = classifier()
    np.savez(tmp_path / "wrong_name.npz", image=np.zeros((2, 4), np.float32))
    np.savez(tmp_path / "wrong_shape.npz", x=np.zeros((2, 5), np.float32))
    np.savez(tmp_path / "wrong_labels.npz", x=np.zeros((2, 4), np.float32), label=np.zeros(2, np.float32))
    with pytest.raises(InputSpecError, match="missing x"):
        load_dataset(tmp_path / "wrong_name.npz", model)
    with pytest.raises(InputSpecError, match="size 5 on axis 1"):
        load_dataset(tmp_path / "wrong_shape.npz", model)
    with pytest.raises(InputSpecError, match="integer class ids"):
        load_dataset(tmp_path / "wrong_labels.npz", model)


def test_labels_from_a_separate_file(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.ones((2, 4), np.float32))
    np.savez(tmp_path / "labels.npz", y=np.array([1, 2]))
    dataset = load_dataset(tmp_path / "x.npz", classifier(), labels=str(tmp_path / "labels.npz"))
    assert dataset.labels.tolist() == [1, 2] and dataset.label_source.endswith("labels.npz")


def test_bench_sweeps_batch_on_symbolic_and_notes_fixed_batch(tmp_path):
    dynamic = Variant("dynamic", write(tmp_path, "d.onnx", classifier()))
    fixed = Variant("fixed", write(tmp_path, "f.onnx", classifier(batch=1)))
    result = bench([dynamic, fixed], backends=["onnxruntime"], threads=[1], batches=[1, 4], runs=2, warmup=0)
    batches = {s.variant.name: [lat.batch for lat in s.latency] for s in result.slots}
    assert batches == {"dynamic": [1, 4], "fixed": [1]}
    assert result.notes == ["fixed: the batch dim is fixed at 1; measured at batch 1 only"]
    report = result.to_json()
    assert report["tool"] == "bench" and report["data"] is None and report["variants"][1]["batch"] == 1


def test_bench_cli_writes_json(tmp_path, cli):
    source = write(tmp_path, "m.onnx", classifier())
    proc = cli("bench", source, "--backends", "onnxruntime", "--batch", "1,2", "--runs", "2", "--warmup", "0",
               "--json", tmp_path / "b.json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert [lat["batch"] for lat in report["results"][0]["latency"]] == [1, 2]
    assert "latency" in proc.stdout


def test_peak_memory_sees_a_large_allocation():
    # fresh anonymous pages, every one written: the allocator cannot hand back memory that
    # earlier tests left resident (np.ones(64 MiB) sometimes grew RSS by only half)
    with PeakMemory() as memory:
        block = mmap.mmap(-1, 64 << 20)
        view = np.frombuffer(block, np.uint8)
        view[:] = 1
        del view
        block.close()
    if memory.bytes is None:
        pytest.skip("no /proc/self/clear_refs here")
    assert memory.bytes >= 60 << 20


def test_dataset_samples_and_json():
    dataset = Dataset("d.npz", [{"x": np.zeros((3, 4), np.float32)}, {"x": np.zeros((2, 4), np.float32)}], None, None)
    assert dataset.samples == 5 and dataset.to_json()["inputs"] == {"x": [5, 4]}


def test_size_on_disk_counts_external_data(tmp_path):
    model = classifier()
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    variant = Variant("ext", path)
    assert variant.size_bytes == path.stat().st_size + (tmp_path / "ext.onnx.data").stat().st_size


def test_variants_of_different_models_are_refused(tmp_path):
    import subprocess

    from graphopt.models import DIGITS_ONNX, DIGITS_TEST
    from tests.conftest import make_linear_model

    other = tmp_path / "linear.onnx"
    onnx.save_model(make_linear_model(), str(other))
    proc = subprocess.run([sys.executable, "-m", "graphopt", "compare", str(DIGITS_ONNX), str(other), "--data",
                           str(DIGITS_TEST)], capture_output=True, text=True)
    assert proc.returncode == 2 and "differ from" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
