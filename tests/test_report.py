"""The HTML report: one file whose embedded PNG plots decode and show what the run measured."""
import base64
import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import graphopt
from graphopt.compare import Variant, bench, compare, load_dataset
from graphopt.errors import GraphoptError
from graphopt.report import render_html, write_report

pytest.importorskip("matplotlib")
MODELS = Path(__file__).resolve().parent.parent / "models"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits_comparison(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    result = graphopt.quantize(MODELS / "digits_cnn.onnx", calibration=str(MODELS / "digits_calib.npz"))
    int8 = graphopt.save_model(result.model, folder / "digits.int8.onnx")
    variants = [Variant("fp32", MODELS / "digits_cnn.onnx"), Variant("int8", int8, result.quantized_tensors)]
    dataset = load_dataset(MODELS / "digits_test.npz", variants[0].model)
    return compare(variants, dataset, backends=["onnxruntime"], runs=3, warmup=1, per_layer=True).to_json()


def embedded_pngs(text: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_compare_report_embeds_decodable_plots(tmp_path, digits_comparison):
    import matplotlib.image

    path = write_report(digits_comparison, tmp_path / "report.html")
    text = path.read_text()
    assert text.startswith("<!doctype html>") and "latency vs accuracy" in text and "per-layer SQNR of int8" in text
    assert not re.search(r'src="(?!data:)', text)  # nothing outside the file
    images = embedded_pngs(text)
    assert len(images) == 2  # latency vs accuracy, per-layer bars of int8
    for png in images:
        assert png.startswith(PNG_SIGNATURE)
        pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert np.ptp(pixels) > 0  # not a blank image
    assert "relu_1_dequantized" in text and "98.61%" in text  # per-layer table, top-1 accuracy


def test_bench_report_plots_latency_against_batch(tmp_path):
    result = bench([Variant("digits", MODELS / "digits_cnn.onnx")], backends=["onnxruntime"], batches=[1, 4],
                   runs=2, warmup=0)
    text = render_html(result.to_json())
    images = embedded_pngs(text)
    assert len(images) == 1 and images[0].startswith(PNG_SIGNATURE) and "latency vs batch" in text


def test_unavailable_backend_shows_its_reason(digits_comparison):
    report = dict(digits_comparison)
    report["results"] = report["results"] + [{"variant": "int8", "backend": "graphopt", "available": False,
                                              "reason": "unsupported op <Foo>", "accuracy": None, "latency": []}]
    text = render_html(report)
    assert "unavailable: unsupported op &lt;Foo&gt;" in text


def test_report_without_matplotlib_is_a_user_error(tmp_path, digits_comparison, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(GraphoptError, match="needs matplotlib"):
        write_report(digits_comparison, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
