"""The command line as users run it: version, help, optimize's outputs, the demo."""
import json
from pathlib import Path

import onnx

import graphopt
from graphopt.verify import verify
from tests.conftest import make_cluttered_cnn, make_linear_model

MODELS = Path(__file__).resolve().parent.parent / "models"


def test_version_help_and_module_entry(cli):
    proc = cli("--version")
    assert proc.returncode == 0 and graphopt.__version__ in proc.stdout
    proc = cli("--help")
    assert proc.returncode == 0
    for command in ("inspect", "optimize", "demo"):
        assert command in proc.stdout
    proc = cli("optimize", "--help")
    assert proc.returncode == 0 and "--in-place" in proc.stdout and "--dim" in proc.stdout


def test_optimize_writes_a_verified_model_and_reports_json(tmp_path, cli):
    source = tmp_path / "demo.onnx"
    onnx.save_model(make_cluttered_cnn(), str(source))
    before = source.read_bytes()
    target = tmp_path / "demo.opt.onnx"
    proc = cli("optimize", source, "-o", target, "--dim", "batch=2", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["output"] == str(target)
    assert report["nodes_after"] < report["nodes_before"]
    assert report["verification"]["input_shapes"] == {"image": [2, 3, 32, 32]}
    assert source.read_bytes() == before
    optimized = graphopt.load_model(target)
    assert verify(make_cluttered_cnn(), optimized, dims={"batch": 3}).ok
    kept_ops = {n.op_type for n in optimized.graph.node}
    assert not kept_ops & {"Identity", "Dropout", "Cast"}


def test_optimize_human_output_lists_passes_and_verification(tmp_path, cli):
    source = tmp_path / "m.onnx"
    onnx.save_model(make_linear_model(), str(source))
    proc = cli("optimize", source, "-o", tmp_path / "o.onnx")
    assert proc.returncode == 0, proc.stderr
    assert "verification on onnxruntime" in proc.stdout and "yes" in proc.stdout
    assert "wrote" in proc.stdout


def test_optimize_unknown_skip_and_bad_dim_are_user_errors(tmp_path, cli):
    source = tmp_path / "m.onnx"
    onnx.save_model(make_linear_model(), str(source))
    proc = cli("optimize", source, "-o", tmp_path / "o.onnx", "--skip", "nonsense")
    assert proc.returncode == 2 and "no such pass" in proc.stderr
    proc = cli("optimize", source, "-o", tmp_path / "o.onnx", "--dim", "batch=zero")
    assert proc.returncode == 2 and "--dim 'batch=zero'" in proc.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_unsupported_op_is_a_clear_error(tmp_path, cli):
    model = make_linear_model()
    model.graph.node[2].op_type = "FancyRelu"
    model.graph.node[2].domain = "com.example"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    source = tmp_path / "custom.onnx"
    onnx.save_model(model, str(source))
    proc = cli("optimize", source, "-o", tmp_path / "o.onnx")
    assert proc.returncode == 2, proc.stderr
    assert "onnxruntime cannot load the model" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


def test_demo_runs_end_to_end(tmp_path, cli):
    proc = cli("demo", "--workdir", tmp_path, "--runs", "0", "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert "graphopt inspect" in proc.stdout and "verification on onnxruntime" in proc.stdout
    assert (tmp_path / "digits_cnn.int8.onnx").is_file() and not (tmp_path / "report.html").exists()


def digits_accuracy(model_path) -> float:
    import numpy as np
    import onnxruntime as ort

    data = np.load(MODELS / "digits_test.npz")
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": data["image"]})[0]
    return float(np.mean(logits.argmax(axis=1) == data["label"]))


def test_optimize_quantize_int8_keeps_digits_accuracy(tmp_path, cli):
    target = tmp_path / "digits.int8.onnx"
    proc = cli("optimize", MODELS / "digits_cnn.onnx", "-o", target, "--quantize", "int8",
               "--calibration", MODELS / "digits_calib.npz", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["quantization"]["mode"] == "static" and report["quantization"]["calibration_samples"] == 200
    assert report["quantization"]["outputs"][0]["cosine"] > 0.99
    quantized = graphopt.load_model(target)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in quantized.graph.node}
    drop = digits_accuracy(MODELS / "digits_cnn.onnx") - digits_accuracy(target)
    assert drop <= 0.005


def test_optimize_quantize_human_output_and_bad_calibration(tmp_path, cli):
    target = tmp_path / "d.onnx"
    proc = cli("optimize", MODELS / "digits_cnn.onnx", "-o", target, "--quantize", "int8",
               "--calibration", MODELS / "digits_calib.npz", "--report-layers")
    assert proc.returncode == 0, proc.stderr
    assert "quantization (static, 200 calibration samples)" in proc.stdout and "SQNR dB" in proc.stdout
    proc = cli("optimize", MODELS / "digits_cnn.onnx", "-o", tmp_path / "x.onnx", "--quantize", "int8")
    assert proc.returncode == 2 and "--quantize int8 needs --calibration" in proc.stderr
    bad = tmp_path / "bad.npz"
    import numpy as np
    np.savez(bad, pixels=np.zeros((4, 1, 8, 8), np.float32))
    proc = cli("optimize", MODELS / "digits_cnn.onnx", "-o", tmp_path / "x.onnx", "--quantize", "int8",
               "--calibration", bad)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_optimize_prune_then_quantize_keeps_digits_accuracy(tmp_path, cli):
    target = tmp_path / "digits.pruned.int8.onnx"
    proc = cli("optimize", MODELS / "digits_cnn.onnx", "-o", target, "--prune", "0.5", "--prune-method", "obs",
               "--calibration", MODELS / "digits_calib.npz", "--quantize", "int8", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["pruning"]["method"] == "obs" and abs(report["pruning"]["sparsity"] - 0.5) < 0.01
    assert digits_accuracy(MODELS / "digits_cnn.onnx") - digits_accuracy(target) <= 0.01
    proc = cli("optimize", MODELS / "digits_cnn.onnx", "-o", tmp_path / "x.onnx", "--prune", "0.5",
               "--prune-method", "wanda")
    assert proc.returncode == 2 and "--prune-method wanda needs --calibration" in proc.stderr


def test_sensitivity_command_recommends_ratios(cli):
    proc = cli("sensitivity", MODELS / "digits_cnn.onnx", "--data", MODELS / "digits_test.npz", "--labels", "label",
               "--levels", "0.5,0.9", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["recommended"] and all(0 <= r < 1 for r in result["recommended"].values())
    proc = cli("sensitivity", MODELS / "digits_cnn.onnx", "--data", MODELS / "digits_test.npz", "--labels", "nope")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
