"""The command line as users run it: version, help, optimize's outputs, the demo."""
import json

import onnx

import graphopt
from graphopt.demo import build_demo_model
from graphopt.verify import verify
from tests.conftest import make_linear_model


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
    onnx.save_model(build_demo_model(), str(source))
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
    assert verify(build_demo_model(), optimized, dims={"batch": 3}).ok
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
    proc = cli("demo", "--workdir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "graphopt inspect" in proc.stdout and "verification on onnxruntime" in proc.stdout
    assert (tmp_path / "demo.opt.onnx").is_file()
