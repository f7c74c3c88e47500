"""Zoo models, fp32 and QDQ int8, on graphopt's runtime against onnxruntime on the same file.

fp32: within 1e-4 relative to the output's largest magnitude. int8 (QDQ, U8S8 per-channel, as
onnxruntime's quantize_static writes it): every Conv/MatMul/Gemm with constant weights is lowered
to one kernel call that requantizes as onnxruntime's QLinearConv/QLinearMatMul do (float32
multiplier, round half to even), and residual Adds
reproduce QLinearAdd's float32 arithmetic, so the outputs equal onnxruntime's bit for bit.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphopt import kernels
from graphopt.feeds import make_feeds
from graphopt.runtime import Session

ZOO = ["resnet18", "mobilenetv3", "bert-mini", "yolo-head"]


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo")


def _exported(name: str, folder) -> str:
    pytest.importorskip("torch")
    from graphopt.export import export_model
    path = folder / f"{name}.onnx"
    if not path.exists():
        export_model(name, path)
    return str(path)


def _quantized(path: str, out: str) -> str:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = onnx.load(path)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([make_feeds(model, seed=s) for s in range(3)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(path, out, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    return out


def _compare(path: str, threads: int = 1):
    feeds = make_feeds(onnx.load(path), seed=11)
    ours = Session(path, threads=threads).run(None, feeds)
    theirs = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)
    return ours, theirs


def _assert_fp32_close(ours, theirs):
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))


@pytest.mark.parametrize("isa", kernels.supported_isas())
def test_digits_cnn_fp32_and_int8_on_every_isa_path(isa, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_ISA", isa)
    _assert_fp32_close(*_compare("models/digits_cnn.onnx"))
    qdq = _quantized("models/digits_cnn.onnx", str(tmp_path / "digits.qdq.onnx"))
    lowered = sorted(g.spec.op_type for g in Session(qdq).lowered)
    assert lowered == ["Int8Conv", "Int8Conv", "Int8Gemm", "Int8Gemm", "MaxPool", "Reshape"]
    ours, theirs = _compare(qdq)
    np.testing.assert_array_equal(ours[0], theirs[0])


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_fp32_matches_onnxruntime(name, zoo_dir):
    _assert_fp32_close(*_compare(_exported(name, zoo_dir), threads=2))


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_int8_qdq_matches_onnxruntime_exactly(name, zoo_dir):
    qdq = _quantized(_exported(name, zoo_dir), str(zoo_dir / f"{name}.qdq.onnx"))
    model = onnx.load(qdq)
    initializers = {t.name for t in model.graph.initializer}
    constant_dq = {n.output[0] for n in model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in initializers}
    with_weights = [n for n in model.graph.node
                    if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in constant_dq]
    lowered = [g.spec.op_type for g in Session(qdq).lowered]
    assert sum(op in ("Int8Conv", "Int8Gemm", "Int8MatMul") for op in lowered) >= len(with_weights)
    ours, theirs = _compare(qdq)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


PPOCR = {"ch_PP-OCRv4_det_infer.onnx": (1, 3, 160, 160), "ch_PP-OCRv4_rec_infer.onnx": (1, 3, 48, 160)}


@pytest.mark.slow
@pytest.mark.parametrize("file_name", PPOCR)
def test_ppocr_v4_fp32_matches_onnxruntime(file_name):
    rapidocr = pytest.importorskip("rapidocr_onnxruntime", reason="PP-OCRv4 ships with rapidocr_onnxruntime")
    from pathlib import Path
    path = str(Path(rapidocr.__file__).parent / "models" / file_name)
    feeds = {"x": np.random.default_rng(0).random(PPOCR[file_name], dtype=np.float32)}
    ours = Session(path).run(None, feeds)
    theirs = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)
    # both outputs are probabilities (det: a sigmoid map, rec: a softmax): absolute tolerance on
    # [0, 1]; onnxruntime's sigmoid approximation returns exactly 0 where the true value is 1e-10
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
