"""Model I/O: every bad input gets one clear line and exit status 2, and nothing is lost."""
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphopt
from graphopt import model_io
from graphopt.errors import ModelLoadError, OutputPathError, UnsafeExternalDataError, UnsupportedModelError
from tests.conftest import make_linear_model


def save_with_external_data(model: onnx.ModelProto, folder: Path, location: str = "weights.bin") -> Path:
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path


def set_external_location(path: Path, location: str) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())


def bad_model_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path of a bad model, phrase the one-line error must contain)."""
    good = make_linear_model().SerializeToString()
    cases = {}
    (tmp / "text.onnx").write_text("this is a text file, not a model\n" * 20)
    cases["not onnx"] = (tmp / "text.onnx", "not an ONNX model")
    (tmp / "empty.onnx").write_bytes(b"")
    cases["empty"] = (tmp / "empty.onnx", "not an ONNX model")
    (tmp / "truncated.onnx").write_bytes(good[: len(good) // 2])
    cases["truncated"] = (tmp / "truncated.onnx", "truncated or corrupt")
    broken = make_linear_model()
    broken.graph.node[1].input[1] = "nowhere"
    (tmp / "unchecked.onnx").write_bytes(broken.SerializeToString())
    cases["checker"] = (tmp / "unchecked.onnx", "the ONNX checker rejects the model")
    future_ir = make_linear_model(ir_version=onnx.IR_VERSION + 1)
    (tmp / "future_ir.onnx").write_bytes(future_ir.SerializeToString())
    cases["new ir"] = (tmp / "future_ir.onnx", f"IR version {onnx.IR_VERSION + 1} is newer")
    future_opset = make_linear_model(opset=onnx.defs.onnx_opset_version() + 1)
    (tmp / "future_opset.onnx").write_bytes(future_opset.SerializeToString())
    cases["new opset"] = (tmp / "future_opset.onnx", "is newer than the installed onnx")
    cases["missing file"] = (tmp / "does_not_exist.onnx", "no such file")
    for name, location, phrase in [
        ("missing data", "gone.bin", "does not exist"),
        ("absolute data", str(tmp / "outside.bin"), "absolute path; refused"),
        ("dotdot data", "../outside.bin", "escapes the model's folder; refused"),
        ("symlink data", "link.bin", "links outside the model's folder; refused"),
    ]:
        folder = tmp / name.replace(" ", "_")
        folder.mkdir()
        path = save_with_external_data(make_linear_model(), folder)
        os.replace(folder / "weights.bin", tmp / "outside.bin")
        if name == "symlink data":
            os.symlink(tmp / "outside.bin", folder / "link.bin")
        set_external_location(path, location)
        cases[name] = (path, phrase)
    return cases


CASES = ["not onnx", "empty", "truncated", "checker", "new ir", "new opset", "missing file",
         "missing data", "absolute data", "dotdot data", "symlink data"]


@pytest.mark.parametrize("case", CASES)
def test_load_model_refuses_bad_input(tmp_path, case):
    path, phrase = bad_model_cases(tmp_path)[case]
    with pytest.raises((ModelLoadError, UnsupportedModelError, UnsafeExternalDataError)) as info:
        model_io.load_model(path)
    assert phrase in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("command", ["inspect", "optimize"])
@pytest.mark.parametrize("case", CASES)
def test_cli_bad_input_one_line_exit_2_nothing_lost(tmp_path, cli, command, case):
    path, phrase = bad_model_cases(tmp_path)[case]
    before = path.read_bytes() if path.exists() else None
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = [command, path] + (["-o", out_dir / "result.onnx"] if command == "optimize" else [])
    proc = cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and phrase in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert (path.read_bytes() if path.exists() else None) == before
    assert list(out_dir.iterdir()) == []


def test_refused_external_data_is_never_read(tmp_path, monkeypatch):
    path, _ = bad_model_cases(tmp_path)["dotdot data"]
    opened = []
    real_open = open

    def spy_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy_open)
    with pytest.raises(UnsafeExternalDataError):
        model_io.load_model(path)
    assert not any(name.endswith("outside.bin") for name in opened)


def test_debug_flag_shows_traceback(tmp_path, cli):
    (tmp_path / "bad.onnx").write_text("nope")
    proc = cli("inspect", tmp_path / "bad.onnx", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ModelLoadError" in proc.stderr


def test_external_data_inside_folder_loads(tmp_path):
    model = make_linear_model()
    expected = numpy_helper.to_array(model.graph.initializer[0])
    (tmp_path / "m").mkdir()
    path = save_with_external_data(model, tmp_path / "m")
    loaded = model_io.load_model(path)
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), expected)


def test_save_refuses_to_overwrite_input(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(make_linear_model(), str(path))
    before = path.read_bytes()
    with pytest.raises(OutputPathError, match="refusing to overwrite the input"):
        graphopt.save_model(make_linear_model(opset=18), path, protect=(path,))
    assert path.read_bytes() == before


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous content")

    def failing_save(model, f, *args, **kwargs):
        Path(f).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", failing_save)
    with pytest.raises(OutputPathError, match="write failed"):
        graphopt.save_model(make_linear_model(), target)
    assert target.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_save_external_data_on_request_and_above_limit(tmp_path, monkeypatch):
    model = make_linear_model()
    # Large enough to leave the protobuf when external data is chosen automatically.
    model.graph.initializer.append(numpy_helper.from_array(np.ones((32, 32), np.float32), "big"))
    forced = graphopt.save_model(model, tmp_path / "forced.onnx", external_data=True)
    assert (tmp_path / "forced.onnx.data").is_file()
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT_BYTES", 1024)
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_MARGIN_BYTES", 1000)
    graphopt.save_model(model, tmp_path / "auto.onnx")
    assert (tmp_path / "auto.onnx.data").is_file()
    for path in (forced, tmp_path / "auto.onnx"):
        loaded = model_io.load_model(path)
        for a, b in zip(loaded.graph.initializer, model.graph.initializer):
            np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT_BYTES", 2 << 30)
    graphopt.save_model(model, tmp_path / "plain.onnx")
    assert not (tmp_path / "plain.onnx.data").exists()


def test_optimize_in_place_and_output_rules(tmp_path, cli):
    path = tmp_path / "m.onnx"
    onnx.save_model(make_linear_model(), str(path))
    before = path.read_bytes()
    proc = cli("optimize", path, "-o", path)
    assert proc.returncode == 2 and "refusing to overwrite the input" in proc.stderr
    assert path.read_bytes() == before
    proc = cli("optimize", path)
    assert proc.returncode == 2 and "give either -o OUTPUT or --in-place" in proc.stderr
    proc = cli("optimize", path, "--in-place")
    assert proc.returncode == 0, proc.stderr
    model_io.load_model(path)
