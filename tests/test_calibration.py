"""Calibration data readers (checked before any work) and range collectors (bounded memory)."""
import sys

import numpy as np
import onnx
import pytest

import graphopt.calibration as calibration
from graphopt.calibration import (
    HistogramCollector,
    MinMaxCollector,
    RandomCalibrationWarning,
    calibration_data,
    collect_ranges,
    kl_threshold_bins,
)
from graphopt.errors import GraphoptError, InputSpecError
from graphopt.models import DIGITS_CALIB, DIGITS_ONNX
from graphopt.quantize import quantize


@pytest.fixture(scope="module")
def digits():
    return onnx.load(DIGITS_ONNX)


def images(count, dtype=np.float32):
    return np.random.default_rng(0).uniform(0, 1, (count, 1, 8, 8)).astype(dtype)


class ListReader:
    """onnxruntime's CalibrationDataReader interface."""

    def __init__(self, items):
        self.items, self.position = items, 0

    def get_next(self):
        self.position += 1
        return self.items[self.position - 1] if self.position <= len(self.items) else None

    def rewind(self):
        self.position = 0


def batch_sizes(data):
    return [len(feeds["image"]) for feeds in data]


def test_npz_batches_on_the_symbolic_batch_axis(digits):
    data = calibration_data(str(DIGITS_CALIB), digits, batch_size=64)
    assert data.num_samples == 200 and batch_sizes(data) == [64, 64, 64, 8]
    assert batch_sizes(data) == [64, 64, 64, 8]  # can be read again


def test_a_fixed_batch_axis_sets_the_batch_and_drops_the_remainder():
    from tests.passes.quantize_builders import conv_relu_pool_conv
    m = conv_relu_pool_conv()  # input x: [1, 16, 8, 8]
    data = calibration_data({"x": np.zeros((3, 16, 8, 8), np.float32)}, m)
    assert [len(f["x"]) for f in data] == [1, 1, 1]


def test_module_function_and_file_function_sources(digits, tmp_path, monkeypatch):
    source = "import numpy as np\ndef batches():\n    return [{'image': np.zeros((2, 1, 8, 8), np.float32)}] * 3\n"
    (tmp_path / "calib_source.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "calib_source", raising=False)
    for spec in ("calib_source:batches", f"{tmp_path / 'calib_source.py'}:batches"):
        data = calibration_data(spec, digits)
        assert batch_sizes(data) == [2, 2, 2] and batch_sizes(data) == [2, 2, 2]
    with pytest.raises(InputSpecError, match="has no function 'nope'"):
        calibration_data("calib_source:nope", digits)
    with pytest.raises(InputSpecError, match="cannot import"):
        calibration_data("no_such_module_here:f", digits)


def test_get_next_reader_with_rewind(digits):
    reader = ListReader([{"image": images(4)}, {"image": images(3)}])
    data = calibration_data(reader, digits)
    assert batch_sizes(data) == [4, 3] and batch_sizes(data) == [4, 3]


def test_a_reader_without_rewind_is_read_once(digits):
    data = calibration_data(iter([{"image": images(2)}]), digits)
    assert batch_sizes(data) == [2]
    with pytest.raises(InputSpecError, match="can be read only once"):
        list(data)


def test_random_only_by_name_and_with_a_warning(digits):
    with pytest.warns(RandomCalibrationWarning):
        data = calibration_data("random", digits, random_batches=3)
    assert len(list(data)) == 3
    with pytest.raises(InputSpecError, match="needs calibration data"):
        quantize(digits)
    with pytest.raises(InputSpecError, match="cannot calibrate from a int"):
        calibration_data(3, digits)


@pytest.mark.parametrize("source, message", [
    ({"image": images(0)}, "no calibration samples"),
    ({"input": images(4)}, "missing image; not model inputs: input"),
    ({"image": images(4), "label": np.zeros(4)}, "not model inputs: label"),
    ({"image": images(4, np.float64)}, "'image' is float64, the model's input is float32"),
    ({"image": images(4)[:, :, :4]}, "size 4 on axis 2"),
    ({"image": images(4)[0]}, "has shape \\[1, 8, 8\\]"),
    (ListReader([]), "is empty"),
    (ListReader([{"image": images(2, np.float16)}]), "item 0: 'image' is float16"),
    (ListReader([[1, 2]]), "expected a dict"),
    ("missing.npz", "calibration file missing.npz: no such file"),
    ("notafile", "not a file, 'module:function' or 'random'"),
])
def test_bad_data_fails_before_any_work(digits, monkeypatch, source, message):
    def no_session(*args, **kwargs):
        raise AssertionError("onnxruntime was started before the data was checked")
    monkeypatch.setattr(calibration, "ort_session", no_session)
    with pytest.raises(InputSpecError, match=message):
        quantize(digits, source)


def test_mismatched_sample_counts(digits):
    m = onnx.load(DIGITS_ONNX)
    with pytest.raises(InputSpecError, match="different numbers of samples"):
        calibration._array_data({"image": images(3), "other": images(2)},
                                calibration.input_specs(m) + [calibration.InputSpec("other", np.dtype("float32"),
                                                                                    ["b", 1, 8, 8])], 32, "arrays")


def test_a_bad_later_item_names_its_position(digits):
    reader = ListReader([{"image": images(2)}, {"image": images(2)[:, :, :3]}])
    with pytest.raises(InputSpecError, match="item 1"):
        quantize(digits, reader)


def test_minmax_over_batches_equals_numpy():
    values = np.random.default_rng(1).standard_normal(10_000)
    collector = MinMaxCollector()
    for chunk in np.array_split(values, 7):
        collector.update("t", chunk)
    assert (collector.range("t").low, collector.range("t").high) == (values.min(), values.max())


def test_histogram_memory_is_bounded_and_rebinning_keeps_every_count():
    collector = HistogramCollector(bins=1024)
    rng = np.random.default_rng(2)
    total = 0
    for scale in (0.1, 1, 10, 100, 1000):  # the bound doubles many times
        chunk = rng.standard_normal(5_000) * scale
        collector.update("t", chunk)
        total += chunk.size
        assert collector.hist["t"].shape == (1024,)
    assert collector.hist["t"].sum() + collector.zeros["t"] == total
    assert collector.bound["t"] >= 1000 * 3


def test_percentile_matches_numpy():
    values = np.random.default_rng(3).standard_normal(200_000)
    collector = HistogramCollector()
    for chunk in np.array_split(values, 10):
        collector.update("t", chunk)
    got = collector.percentile_range("t", 99.9)
    want = np.percentile(values, [0.05, 99.95])
    # A few bins apart at most: the tail is sparse (~3 values per bin here) and numpy interpolates.
    assert abs(got.low - want[0]) <= 0.02 and abs(got.high - want[1]) <= 0.02
    assert got.min == values.min() and got.max == values.max()


def test_entropy_clips_a_lone_outlier():
    values = np.abs(np.random.default_rng(4).standard_normal(100_000))
    collector = HistogramCollector()
    collector.update("t", np.append(values, 60.0))
    found = collector.entropy_range("t")
    assert found.low == values.min() and 2 < found.high < 10 and found.max == 60.0


def test_kl_threshold_of_a_flat_histogram_keeps_everything():
    assert kl_threshold_bins(np.ones(1024), 128) >= 1000


def test_collect_ranges_methods_and_progress(digits):
    calls = []
    data = calibration_data(str(DIGITS_CALIB), digits, batch_size=50)
    names = ["relu", "relu_1", "linear"]
    ranges = {m: collect_ranges(digits, names, data, method=m, progress=lambda d, t: calls.append((d, t)))
              for m in ("minmax", "percentile", "entropy")}
    assert calls[:4] == [(50, 200), (100, 200), (150, 200), (200, 200)]
    for name in names:
        full = ranges["minmax"][name]
        for method in ("percentile", "entropy"):
            assert full.low <= ranges[method][name].low <= ranges[method][name].high <= full.high
    assert ranges["minmax"]["relu"].low == 0.0


def test_unknown_method_and_bad_percentile(digits):
    data = calibration_data(str(DIGITS_CALIB), digits)
    with pytest.raises(InputSpecError, match="unknown calibration method"):
        collect_ranges(digits, ["relu"], data, method="mse")
    with pytest.raises(InputSpecError, match="percentile"):
        collect_ranges(digits, ["relu"], data, method="percentile", percentile=0)


def test_onnxruntime_failure_names_the_batch(digits):
    m = onnx.load(DIGITS_ONNX)
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"  # lets a 4x4 image through the check
    data = calibration_data({"image": images(3)[:, :, :4]}, m)  # 3·256 values: no [-1, 512] view
    with pytest.raises(GraphoptError, match="calibration batch 0"):
        collect_ranges(m, ["relu"], data)
