"""graphopt.export and `graphopt export`: user modules, eval mode, fallback, external data, errors."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphopt.errors import GraphoptError, InputSpecError

USER_MODEL = textwrap.dedent("""
    import torch
    from torch import nn


    class SmallConvNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.head = nn.Linear(8, 5)

        def forward(self, image):
            return self.head(torch.relu(self.bn(self.conv(image))).mean((2, 3)))


    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.export refuses it, tracing does not
                return self.fc(x)
            return -self.fc(x)


    def make_model():
        torch.manual_seed(0)
        return SmallConvNet()


    def branchy():
        torch.manual_seed(0)
        return Branchy()


    def not_a_module():
        return 42
""")


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="export needs torch: pip install -e '.[torch]'")


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "user_model.py"
    path.write_text(USER_MODEL)
    return path


def test_parse_input_shapes_keeps_order_and_refuses_bad_text():
    from graphopt.export import parse_input_shapes

    assert list(parse_input_shapes(["b=1,3", "a = 2, 4,8"]).items()) == [("b", (1, 3)), ("a", (2, 4, 8))]
    for bad in ["image", "image=", "=1,3", "image=1,x", "image=1,0", "image=1,,3"]:
        with pytest.raises(InputSpecError):
            parse_input_shapes([bad])


def test_user_module_in_a_py_file_exports_with_dynamic_batch(torch, user_file, tmp_path):
    from graphopt.export import export_model, load_factory

    result = export_model(f"{user_file}:make_model", tmp_path / "user.onnx", input_shapes={"image": (1, 3, 16, 16)},
                          dynamic_batch=True)
    assert result.exporter == "dynamo"
    onnx.checker.check_model(str(result.path))
    assert result.inputs == {"image": ["batch", 3, 16, 16]} and list(result.output_diffs) == ["output"]
    assert result.max_abs_diff <= 1e-4
    batch = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = load_factory(f"{user_file}:make_model").eval()(torch.from_numpy(batch)).numpy()
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"image": batch})[0], expected, rtol=0, atol=1e-4)


def test_a_wrappers_training_flag_does_not_leak_into_the_wrapped_model(torch, tmp_path):
    from graphopt.export import export_model

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))

        def train(self, mode=True):  # a wrapper that keeps the wrapped model training
            super().train(mode)
            self.inner.train(True)
            return self

        def forward(self, x):
            return self.inner(x)

    torch.manual_seed(0)
    wrapper = Wrapper().train()
    result = export_model(wrapper, tmp_path / "wrapped.onnx", input_shapes={"x": (64, 4)})
    assert result.max_abs_diff <= 1e-5  # dropout left on would differ by O(1)
    assert "Dropout" not in {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert wrapper.training and wrapper.inner[1].training  # the caller's module is left as it was


def test_dynamo_failure_falls_back_to_torchscript_with_a_warning(torch, user_file, tmp_path):
    from graphopt.export import ExportFallbackWarning, export_model

    with pytest.warns(ExportFallbackWarning, match="dynamo exporter failed.*data-dependent"):
        result = export_model(f"{user_file}:branchy", tmp_path / "branchy.onnx", input_shapes={"x": (2, 4)})
    assert result.exporter == "torchscript" and "data-dependent" in result.fallback_reason
    onnx.checker.check_model(str(result.path))
    assert result.max_abs_diff <= 1e-4


def test_requested_opset_is_honoured_even_where_dynamo_cannot_convert(torch, user_file, tmp_path):
    from graphopt.export import ExportFallbackWarning, export_model

    # mean() becomes ReduceMean, whose axes moved from attribute to input in opset 18: the dynamo
    # exporter cannot convert it down and keeps opset 18.
    with pytest.warns(ExportFallbackWarning, match="opset 18 instead of 17"):
        result = export_model(f"{user_file}:make_model", tmp_path / "m17.onnx", opset=17,
                              input_shapes={"image": (1, 3, 8, 8)})
    assert result.opset == 17 and result.exporter == "torchscript" and result.max_abs_diff <= 1e-4


def test_export_can_write_the_weights_beside_the_model(torch, tmp_path):
    from graphopt.export import export_model

    result = export_model("mlp", tmp_path / "mlp.onnx", opset=18, external_data=True)
    assert result.data_path == tmp_path / "mlp.onnx.data" and result.data_path.stat().st_size > 900_000
    assert result.path.stat().st_size < 100_000 and result.opset == 18
    assert result.max_abs_diff <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx", "mlp.onnx.data"]  # no temporary left


def test_user_file_problems_are_graphopt_errors(torch, user_file, tmp_path):
    from graphopt.export import export_model

    out = tmp_path / "out.onnx"
    shapes = {"image": (1, 3, 8, 8)}
    cases = [
        (f"{tmp_path}/missing.py:make_model", shapes, "no such file"),
        (f"{user_file}:nope", shapes, "no function 'nope'.*branchy, make_model"),
        (f"{user_file}:not_a_module", shapes, "expected a torch.nn.Module, got int"),
        (f"{user_file}:make_model", None, "example input shapes are needed"),
        (f"{user_file}:make_model", {"image": (1, 5, 8, 8)}, "forward\\(\\) fails"),
        (str(user_file), shapes, "name the function"),
    ]
    for spec, input_shapes, message in cases:
        with pytest.raises(GraphoptError, match=message):
            export_model(spec, out, input_shapes=input_shapes)
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise ValueError('bad weights path')\n")
    with pytest.raises(GraphoptError, match="importing it failed: ValueError: bad weights path"):
        export_model(f"{broken}:make", out, input_shapes=shapes)
    assert not out.exists()


def test_cli_export_prints_the_difference_from_torch(torch, cli, user_file, tmp_path):
    done = cli("export", "mlp", "-o", tmp_path / "mlp.onnx", "--dynamic-batch")
    assert done.returncode == 0, done.stderr
    assert "max abs diff vs torch " in done.stdout and "input features: [batch, 784]" in done.stdout
    onnx.checker.check_model(str(tmp_path / "mlp.onnx"))
    done = cli("export", f"{user_file}:branchy", "-o", tmp_path / "b.onnx", "--input-shape", "x=2,4")
    assert done.returncode == 0, done.stderr
    assert "torchscript exporter" in done.stdout and "max abs diff vs torch " in done.stdout
    assert done.stderr.count("\n") == 1 and "warning: the dynamo exporter failed" in done.stderr


@pytest.mark.parametrize("target, message", [("resnet-18", "unknown model 'resnet-18'"),
                                             ("missing.py:make_model", "missing.py: no such file")])
def test_cli_export_bad_model_is_one_line_and_exit_2(cli, tmp_path, target, message):
    done = cli("export", target, "-o", tmp_path / "out.onnx", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphopt: error: ")
    has_torch = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0
    assert message in lines[0] or (not has_torch and 'pip install -e ".[torch]"' in lines[0])
    assert not (tmp_path / "out.onnx").exists()


def test_cli_export_without_torch_tells_how_to_install_it(tmp_path):
    # sys.modules["torch"] = None makes `import torch` fail as if torch were not installed.
    code = ("import sys; sys.modules['torch'] = None; from graphopt.cli import main; "
            f"sys.argv = ['graphopt', 'export', 'mlp', '-o', {str(tmp_path / 'm.onnx')!r}]; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, COLUMNS="200"))
    assert done.returncode == 2
    expected = 'graphopt: error: export needs PyTorch, which is not installed (pip install -e ".[torch]")'
    assert done.stderr.strip() == expected
