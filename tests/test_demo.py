"""graphopt demo: digits-cnn inspected, quantized, compared on both backends, with a report, in under a minute."""
import time

import pytest

from tests.test_report import embedded_pngs


def test_demo_runs_end_to_end_under_a_minute(tmp_path, cli):
    pytest.importorskip("matplotlib")
    start = time.perf_counter()
    proc = cli("demo", "--workdir", tmp_path, "--runs", "10")
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert seconds < 60
    for heading in ("graphopt inspect", "verification on onnxruntime", "quantization (static, 200 calibration",
                    "pruning: unstructured, obs",
                    "accuracy vs fp32 on onnxruntime (360 samples)", "paired by provenance", "latency"):
        assert heading in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("│ int8")]
    assert any("onnxruntime" in row for row in rows) and any("graphopt" in row for row in rows)
    assert any(line.startswith("│ pruned 50% + int8") for line in proc.stdout.splitlines())
    for name in ("digits_cnn.int8.onnx", "digits_cnn.opt.onnx", "digits_cnn.pruned.int8.onnx"):
        assert (tmp_path / name).is_file()
    # latency vs accuracy, and one per-layer SQNR plot per quantized variant
    assert len(embedded_pngs((tmp_path / "report.html").read_text())) == 3
