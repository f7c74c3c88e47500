"""Acceptance on real models: task metrics of the int8 model on onnxruntime (issue 6)."""
import numpy as np
import onnx
import pytest

from graphopt.calibration import calibration_data
from graphopt.models import DIGITS_CALIB, DIGITS_ONNX, get_entry, load_digits_split
from graphopt.oracle import ort_session
from graphopt.quantize import layer_errors, quantize
from graphopt.verify import cosine_similarity


@pytest.fixture(scope="module")
def digits():
    return onnx.load(DIGITS_ONNX)


@pytest.fixture(scope="module")
def zoo_model(tmp_path_factory):
    """Export a zoo model once per module (needs torch)."""
    pytest.importorskip("torch", reason="zoo models need torch: pip install -e '.[torch]'")
    from graphopt.export import export_model
    folder = tmp_path_factory.mktemp("zoo")
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = onnx.load(export_model(name, folder / f"{name}.onnx").path)
        return cache[name]
    return get


def top1(model, split) -> float:
    logits = ort_session(model, optimize=True).run(None, {"image": split["image"]})[0]
    return float((logits.argmax(axis=1) == split["label"]).mean())


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_digits_top1_drop_at_most_half_a_point(digits, method):
    test = load_digits_split("test")
    result = quantize(digits, str(DIGITS_CALIB), method=method)
    drop = 100 * (top1(digits, test) - top1(result.model, test))
    assert drop <= 0.5, f"{method}: top-1 dropped {drop:.2f} points"
    assert result.calibration_samples == 200


def test_digits_per_layer_sqnr_pairs_every_quantized_tensor(digits):
    result = quantize(digits, str(DIGITS_CALIB))
    errors = layer_errors(digits, result, calibration_data(str(DIGITS_CALIB), digits))
    assert {e.name for e in errors} == set(result.quantized_tensors) | {"logits"}
    assert all(e.original in {t for n in digits.graph.node for t in n.output} | {"image"} for e in errors)
    assert min(e.sqnr_db for e in errors) > 25 and min(e.cosine for e in errors) > 0.99


def test_digits_at_opset_11_is_upgraded_not_written_invalid(digits):
    # Conv, Relu, MaxPool, Reshape and Gemm mean the same at opset 11 (onnx cannot downgrade Relu 14),
    # once Reshape loses its opset-14 attribute allowzero (0, the default, here).
    old = onnx.ModelProto()
    old.CopyFrom(digits)
    old.opset_import[0].version = 11
    for n in old.graph.node:
        kept = [a for a in n.attribute if not (n.op_type == "Reshape" and a.name == "allowzero")]
        del n.attribute[:]
        n.attribute.extend(kept)
    onnx.checker.check_model(old)
    result = quantize(old, str(DIGITS_CALIB))
    onnx.checker.check_model(result.model, full_check=True)
    assert result.model.opset_import[0].version == 13
    dequantize = [n for n in result.model.graph.node if n.op_type == "DequantizeLinear"]
    assert any(a.name == "axis" for n in dequantize for a in n.attribute)
    test = load_digits_split("test")
    assert 100 * (top1(digits, test) - top1(result.model, test)) <= 0.5


@pytest.mark.parametrize("speed_rules", [True, False])
def test_yolo_head_keeps_the_top_detections(zoo_model, speed_rules):
    entry, model = get_entry("yolo-head"), zoo_model("yolo-head")
    result = quantize(model, [entry.sample_inputs(seed=i) for i in range(1, 5)], speed_rules=speed_rules)
    assert "Concat kept fp32" in result.reports[-1].rewrites
    for seed in (100, 101):
        feeds = entry.sample_inputs(seed=seed)
        want = ort_session(model).run(None, feeds)[0][0]
        got = ort_session(result.model, optimize=True).run(None, feeds)[0][0]
        top = np.argsort(-want[:, 4:].max(axis=1))[:20]
        assert np.array_equal(want[top, 4:].argmax(axis=1), got[top, 4:].argmax(axis=1))
        np.testing.assert_allclose(got[top, :4], want[top, :4], atol=1.0)  # pixels, boxes in 0-640
        np.testing.assert_allclose(got[:, 4:], want[:, 4:], atol=0.01)  # every score survives


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_bert_mini_cosine_at_least_0_99(zoo_model, mode):
    entry, model = get_entry("bert-mini"), zoo_model("bert-mini")
    calibration = [entry.sample_inputs(seed=i) for i in range(1, 9)] if mode == "static" else None
    result = quantize(model, calibration, mode=mode)
    assert sum(result.reports[-1].rewrites.values()) >= 24  # 4 layers x (Q, K, V, O, FFN in, FFN out)
    reference, quantized = ort_session(model), ort_session(result.model, optimize=True)
    for seed in range(100, 103):
        feeds = entry.sample_inputs({"input_ids": (3, 24), "attention_mask": (3, 24)}, seed=seed)
        assert cosine_similarity(reference.run(None, feeds)[0], quantized.run(None, feeds)[0]) >= 0.99


@pytest.mark.slow
def test_mobilenetv3_hardswish_gets_no_qdq_churn(zoo_model):
    entry, model = get_entry("mobilenetv3"), zoo_model("mobilenetv3")
    result = quantize(model, [entry.sample_inputs(seed=i) for i in range(1, 4)])
    q = result.model
    made_by = {out: n.op_type for n in q.graph.node for out in n.output}
    for n in q.graph.node:
        if n.op_type in ("HardSwish", "HardSigmoid"):
            assert made_by.get(n.input[0]) != "DequantizeLinear", n.name
    assert result.reports[-1].rewrites["kept fp32: int8 not faster"] > 0
    feeds = entry.sample_inputs(seed=100)
    assert cosine_similarity(ort_session(model).run(None, feeds)[0],
                             ort_session(q, optimize=True).run(None, feeds)[0]) > 0.99
