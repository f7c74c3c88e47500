"""The model zoo: registry and shipped digits files (no torch), and every model's export (torch)."""
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphopt.errors import GraphoptError
from graphopt.models import DIGITS_CALIB, DIGITS_ONNX, DIGITS_TEST, ZOO, get_entry, load_digits_split, names

ISSUE_MODELS = ["simplenet", "digits-cnn", "resnet18", "mobilenetv3", "bert-mini", "yolo-head", "mlp"]
TOLERANCE = 1e-4


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="the zoo's PyTorch models need torch: pip install -e '.[torch]'")


def ort_run(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_registry_has_the_issue_models_with_specs():
    assert names() == ISSUE_MODELS
    for entry in ZOO.values():
        assert entry.inputs and entry.outputs and entry.summary
        feeds = entry.sample_inputs(seed=1)
        assert list(feeds) == [i.name for i in entry.inputs]
        for spec in entry.inputs:
            assert feeds[spec.name].shape == spec.shape and feeds[spec.name].dtype == np.dtype(spec.dtype)
        again = entry.sample_inputs(seed=1)
        assert all(np.array_equal(feeds[k], again[k]) for k in feeds)
    bert = get_entry("bert-mini")
    assert [i.onnx_dims() for i in bert.inputs] == [["batch", "sequence"]] * 2
    feeds = bert.sample_inputs({"input_ids": (4, 9), "attention_mask": (4, 9)}, seed=0)
    assert feeds["input_ids"].max() < 30522 and set(np.unique(feeds["attention_mask"])) <= {0, 1}
    assert feeds["attention_mask"][0].all() and not feeds["attention_mask"].all()  # some rows are padded


def test_registry_errors_are_one_line():
    with pytest.raises(GraphoptError, match="unknown model 'resnet-18'.*zoo models: simplenet"):
        get_entry("resnet-18")
    with pytest.raises(GraphoptError, match="no input named 'x'"):
        get_entry("mlp").input_shapes({"x": (1, 784)})
    with pytest.raises(GraphoptError, match="rank 4"):
        get_entry("resnet18").input_shapes({"image": (1, 224, 224)})


def test_importing_the_zoo_does_not_import_torch():
    code = "import sys, graphopt.models as m; m.get_entry('resnet18').sample_inputs(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_shipped_digits_cnn_reaches_097_on_onnxruntime_without_torch():
    test = load_digits_split("test")
    model = onnx.load(str(DIGITS_ONNX))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["image"]  # the .npz keys are the input names
    (logits,) = ort_run(DIGITS_ONNX, {"image": test["image"]})
    accuracy = float((logits.argmax(1) == test["label"]).mean())
    assert len(test["label"]) >= 300 and accuracy >= 0.97, accuracy


def test_shipped_calibration_split_is_separate_and_small():
    calib, test = load_digits_split("calib"), load_digits_split("test")
    assert list(calib) == ["image"] and calib["image"].shape[1:] == (1, 8, 8)
    test_rows = {row.tobytes() for row in test["image"]}
    assert not any(row.tobytes() in test_rows for row in calib["image"])
    assert 0.0 <= calib["image"].min() and calib["image"].max() <= 1.0
    for path in (DIGITS_ONNX, DIGITS_TEST, DIGITS_CALIB):
        assert path.stat().st_size < 400_000, path


@pytest.mark.parametrize("name", ISSUE_MODELS)
def test_zoo_model_exports_and_matches_torch(torch, name, tmp_path):
    from graphopt.export import export_model

    entry = get_entry(name)
    result = export_model(name, tmp_path / f"{name}.onnx")
    assert result.exporter == "dynamo" and result.fallback_reason is None
    onnx.checker.check_model(str(result.path))
    assert result.max_abs_diff <= TOLERANCE, result.output_diffs
    assert list(result.output_diffs) == list(entry.outputs)
    assert result.inputs == {i.name: i.onnx_dims() for i in entry.inputs}
    if any(i.dynamic for i in entry.inputs):
        # The symbolic dims really are dynamic: another size still matches torch.
        shapes = {i.name: tuple(s + 3 if axis in i.dynamic else s for axis, s in enumerate(i.shape))
                  for i in entry.inputs}
        feeds = entry.sample_inputs(shapes, seed=5)
        with torch.no_grad():
            expected = entry.build()(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        (actual,) = ort_run(result.path, feeds)
        np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE)


def test_digits_cnn_factory_carries_the_shipped_weights(torch):
    test = load_digits_split("test")
    with torch.no_grad():
        logits = get_entry("digits-cnn").build()(torch.from_numpy(test["image"])).numpy()
    (shipped,) = ort_run(DIGITS_ONNX, {"image": test["image"]})
    np.testing.assert_allclose(logits, shipped, rtol=0, atol=TOLERANCE)


def test_yolo_head_output_mixes_boxes_in_pixels_with_scores(torch):
    entry = get_entry("yolo-head")
    with torch.no_grad():
        detections = entry.build()(torch.from_numpy(entry.sample_inputs()["image"])).numpy()
    assert detections.shape == (1, 400, 84)
    boxes, scores = detections[..., :4], detections[..., 4:]
    assert 0 <= boxes.min() and boxes.max() <= 640 and boxes[..., :2].max() > 500  # centers span the image
    assert 0 <= scores.min() and scores.max() <= 1


def test_simplenet_flatten_size_follows_the_input_size(torch):
    entry = get_entry("simplenet")
    assert entry.build().classifier[1].in_features == 128 * 8 * 8
    shapes = {"image": (2, 3, 64, 48)}
    model = entry.build(shapes)
    assert model.classifier[1].in_features == 128 * 16 * 12
    with torch.no_grad():
        assert model(torch.zeros(shapes["image"])).shape == (2, 10)
