"""float32 LayerNormalization against onnxruntime's CPU kernel, bit for bit: the single node (last
and middle axis, with and without bias, all three outputs, rows shorter and longer than the 8 at
which onnxruntime switches from its scalar Welford loop to MLAS's AVX2 kernel), and the lowered
``DQ → LayerNormalization → Q`` step, which must equal both the three steps apart and onnxruntime.

The arithmetic reproduced is that of onnxruntime on x86-64 with AVX2 and FMA (see
``numba_fp32._layer_norm_row_f32``); elsewhere onnxruntime runs other code, so the exact
comparisons are skipped there."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.runtime import Session, int8


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


pytestmark = pytest.mark.skipif(not {"avx2", "fma"} <= _cpu_flags(),
                                reason="onnxruntime's exact LayerNormalization arithmetic is that of x86-64 AVX2/FMA")


def _ort_session(model):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _layer_norm_model(shape, axis, bias, epsilon):
    tail = list(shape[axis:])
    names = ["x", "scale"] + (["bias"] if bias else [])
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, tail) for n in names[1:]]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "mean", "inv_std")]
    node = helper.make_node("LayerNormalization", names, ["y", "mean", "inv_std"], axis=axis, epsilon=epsilon)
    model = helper.make_model(helper.make_graph([node], "g", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# (shape, axis): rows of 1..7 (scalar Welford), 8..15 (one AVX2 block and tails of up to 7),
# 13 and 35 (a tail of 5 and of 3), 256 (bert-mini's hidden size); a middle axis over 35 and 80
_CASES = [((40, n), -1) for n in (1, 2, 3, 5, 7, 8, 9, 12, 13, 15)] + [
    ((3, 64, 256), -1), ((2, 6, 5, 7), 2), ((3, 5, 4, 4), 1), ((2, 3, 1003), -1)]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape, axis", _CASES)
def test_float_layer_norm_equals_onnxruntime_bit_for_bit(shape, axis, bias):
    epsilon = 1e-12 if shape[-1] == 256 else 1e-5
    model = _layer_norm_model(shape, axis, bias, epsilon)
    ours, theirs = Session(model), _ort_session(model)
    rng = np.random.default_rng(len(shape) * 1000 + shape[-1])
    tail = shape[axis:]
    total = equal = 0
    for trial in range(4):
        # centered and offset rows (the offset makes the variance's cancellation matter)
        x = (rng.standard_normal(shape) * (1 + 2 * trial) + (0, 3, -20, 100)[trial]).astype(np.float32)
        feeds = {"x": x, "scale": rng.normal(1, 0.5, tail).astype(np.float32)}
        if bias:
            feeds["bias"] = rng.normal(0, 0.5, tail).astype(np.float32)
        for a, b in zip(ours.run(None, feeds), theirs.run(None, feeds)):
            assert a.shape == b.shape and a.dtype == b.dtype == np.float32
            total += b.size
            equal += int((a.view(np.uint32) == b.view(np.uint32)).sum())
    assert equal == total, f"{equal} of {total} float32 values bit-equal to onnxruntime"


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n", [5, 13, 256])
def test_dq_layer_norm_q_equals_the_three_steps_and_onnxruntime(n, bias):
    from graphopt.runtime.ops import numba_fp32
    rng = np.random.default_rng(n)
    shape = (2, 64, n)
    inits = [numpy_helper.from_array(np.array(0.043, np.float32), "s"),
             numpy_helper.from_array(np.array(118, np.uint8), "z"),
             numpy_helper.from_array(np.array(0.029, np.float32), "so"),
             numpy_helper.from_array(np.array(127, np.uint8), "zo"),
             numpy_helper.from_array(rng.normal(1, 0.3, n).astype(np.float32), "gamma")]
    names = ["xf", "gamma"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.3, n).astype(np.float32), "beta"))
        names.append("beta")
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"]),
             helper.make_node("LayerNormalization", names, ["yf"], axis=-1, epsilon=1e-12),
             helper.make_node("QuantizeLinear", ["yf", "so", "zo"], ["q"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, list(shape))],
                              [helper.make_tensor_value_info("q", TensorProto.UINT8, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session, reference = Session(model), _ort_session(model)
    assert [s.op_type for s in session._steps] == ["Int8LayerNorm"]
    gamma = numpy_helper.to_array(inits[4])
    beta = numpy_helper.to_array(inits[5]) if bias else None
    for trial in range(3):
        x = rng.integers(0, 256, shape).astype(np.uint8)
        ours = session.run(None, {"x": x})[0]
        xf = int8.dequantize(x, np.float32(0.043), np.int32(118))
        yf = numba_fp32.layer_norm(xf, gamma, beta, 2, 1e-12)[0]
        np.testing.assert_array_equal(ours, int8.quantize_uint8(yf, np.float32(0.029), np.int32(127)))
        np.testing.assert_array_equal(ours, reference.run(None, {"x": x})[0])
