"""What a Session keeps in memory: the model's weights once, not their protobuf, float copies or
the unpacked originals of weights a kernel packed; and the load errors stay those of load_model."""
from __future__ import annotations

import gc
import sys
import tracemalloc
import types
import weakref

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.errors import ModelLoadError, UnsafeExternalDataError, UnsupportedModelError
from graphopt.runtime import Session
from graphopt.runtime import plan as plans
from graphopt.runtime.ops import OPS, OpDef
from tests.runtime.test_session import _model, _ort
from tests.test_model_io import CASES, bad_model_cases




def _reachable_arrays(root) -> list[np.ndarray]:
    """Every numpy array reachable from ``root`` through references (closures, dicts, objects),
    not counting what module globals reach."""
    seen, found, stack = {id(vars(m)) for m in list(sys.modules.values()) if m is not None}, [], [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        try:
            if isinstance(obj, (type, types.ModuleType, weakref.ProxyTypes)):
                continue
        except ReferenceError:
            continue
        if isinstance(obj, types.FunctionType):
            stack.extend([c.cell_contents for c in obj.__closure__ or () if _filled(c)]
                         + list(obj.__defaults__ or ()) + list((obj.__kwdefaults__ or {}).values())
                         + [vars(obj)])
            continue
        if isinstance(obj, np.ndarray):
            found.append(obj)
            base = obj.base
            if base is not None:
                stack.append(base)
            continue
        stack.extend(gc.get_referents(obj))
    return found


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


# ---- loading --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_session_reports_load_errors_like_load_model(tmp_path, case):
    path, phrase = bad_model_cases(tmp_path)[case]
    with pytest.raises((ModelLoadError, UnsupportedModelError, UnsafeExternalDataError)) as info:
        Session(path)
    assert phrase in str(info.value)


def _add_weight_model(weight: onnx.TensorProto):
    nodes = [helper.make_node("Add", ["x", "w"], ["y"], name="add")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])], [weight])


@pytest.mark.parametrize("breakage, phrase", [
    ("short raw data", "raw_data size"),
    ("raw and float data", "one and only one value field"),
])
def test_checker_still_judges_weights_it_would_reject(tmp_path, breakage, phrase):
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    if breakage == "short raw data":
        weight.raw_data = weight.raw_data[:8]
    else:
        weight.float_data.extend([1.0] * 16)
    path = tmp_path / "m.onnx"
    path.write_bytes(_add_weight_model(weight).SerializeToString())
    with pytest.raises(ModelLoadError, match="checker rejects") as info:
        Session(path)
    assert phrase in str(info.value)


def test_session_from_path_bytes_and_model_agree_and_leave_the_callers_model_alone(tmp_path):
    w = np.arange(16, dtype=np.float32).reshape(4, 4)
    model = _add_weight_model(numpy_helper.from_array(w, "w"))
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    before = model.SerializeToString()
    x = np.ones((4, 4), np.float32)
    for source in (path, str(path), model, before):
        np.testing.assert_array_equal(Session(source).run(None, {"x": x})[0], x + w)
    assert model.SerializeToString() == before


def test_session_keeps_no_protobuf(tmp_path):
    model = _add_weight_model(numpy_helper.from_array(np.ones((4, 4), np.float32), "w"))
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    session = Session(path)
    stack, seen = [session], {id(vars(m)) for m in list(sys.modules.values()) if m is not None}
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType)):
            continue
        seen.add(id(obj))
        assert not isinstance(obj, (onnx.ModelProto, onnx.GraphProto, onnx.TensorProto))
        stack.extend(gc.get_referents(obj))


# ---- prepacked constants ----------------------------------------------------------------------
def _packing_matmul(node):
    """A MatMul that keeps its constant B transposed (its 'packed' form) and declares it."""
    b = node.const(1)
    if b is None:
        return OPS_BEFORE["MatMul"].build(node)
    packed = np.ascontiguousarray(b.T)

    def matmul(a, b_unused):
        assert b_unused is None  # the plan passes None for a prepacked input
        return a @ packed.T
    matmul.prepacked_inputs = (1,)
    return matmul


OPS_BEFORE = dict(OPS)


@pytest.fixture
def packing_matmul(monkeypatch):
    monkeypatch.setitem(OPS, "MatMul", OpDef(_packing_matmul, False))


def _matmul_model(k=384, n=512, also_output_weight=False):
    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])]
    if also_output_weight:
        nodes.append(helper.make_node("Identity", ["w"], ["w_out"], name="id"))
        outputs.append(helper.make_tensor_value_info("w_out", TensorProto.FLOAT, [k, n]))
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])], outputs,
                   [numpy_helper.from_array(w, "w")])
    return model, w


def test_prepacked_weight_is_held_once(packing_matmul, tmp_path):
    model, w = _matmul_model(1024, 1536)  # 6 MiB: the session's other allocations are small beside it
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    gc.collect()
    tracemalloc.start()
    try:
        session = Session(path)
        gc.collect()
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    x = np.random.default_rng(1).standard_normal((3, w.shape[0])).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], _ort(model, {"x": x})[0], rtol=1e-4, atol=1e-4)
    shapes = [a.shape for a in _reachable_arrays(session) if a.dtype == np.float32]
    assert w.T.shape in shapes  # the packed copy
    assert w.shape not in shapes  # not the original: neither in the plan's constants nor the node's
    assert retained < 1.3 * w.nbytes
    assert peak < 2.3 * w.nbytes  # the file's array and the packed copy, never more


def test_prepacked_weight_that_another_node_reads_is_kept(packing_matmul):
    model, w = _matmul_model(also_output_weight=True)
    session = Session(model)
    x = np.ones((2, w.shape[0]), np.float32)
    y, w_out = session.run(None, {"x": x})
    np.testing.assert_allclose(y, x @ w, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(w_out, w)


def test_prepacked_inputs_reads_the_declaration():
    def kernel(x, w):
        return x
    assert plans.prepacked_inputs(kernel) == ()
    kernel.prepacked_inputs = (1,)
    assert plans.prepacked_inputs(kernel) == (1,)


# ---- quantized tables -----------------------------------------------------------------------
def test_gather_of_a_quantized_table_keeps_the_table_quantized():
    # an embedding stored uint8 with a per-tensor scale: Gather(DequantizeLinear(table), ids)
    rng = np.random.default_rng(0)
    table = rng.integers(0, 256, (1000, 64), dtype=np.uint8)
    nodes = [helper.make_node("DequantizeLinear", ["table", "scale", "zp"], ["table_f"], name="dq"),
             helper.make_node("Gather", ["table_f", "ids"], ["rows"], axis=0, name="gather"),
             helper.make_node("Relu", ["rows"], ["y"], name="relu")]
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array(0.05, np.float32), "scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "zp")]
    model = _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, "s"])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    session = Session(model)
    ids = np.array([[0, 5, 999, -1], [3, 3, 7, 1]], np.int64)
    np.testing.assert_array_equal(session.run(None, {"ids": ids})[0], _ort(model, {"ids": ids})[0])
    arrays = _reachable_arrays(session)
    # a float copy of the table would have its shape (other float arrays may be reachable
    # through caches that earlier tests filled)
    assert not [a for a in arrays if a.dtype == np.float32 and a.shape == table.shape]
    assert any(a.dtype == np.uint8 and a.shape == table.shape for a in arrays)
