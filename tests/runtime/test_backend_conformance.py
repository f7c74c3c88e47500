"""The ONNX backend conformance suite (node tests) on graphopt's runtime.

Every node test whose graph uses only ops the runtime claims runs here. The tests in EXCLUDED
use element types or attribute values the runtime refuses by design: for those the test checks
that the session refuses them at creation with UnsupportedModelError, then reports a skip.
``pytest tests/runtime/test_backend_conformance.py -q`` prints passed (conformant) and skipped
(excluded) counts.
"""
from __future__ import annotations

import os
import re
import tempfile
import warnings

import pytest

os.environ.setdefault("ONNX_HOME", tempfile.mkdtemp(prefix="onnx_home_"))

from onnx.backend.test.loader import load_model_tests  # noqa: E402

from graphopt.errors import UnsupportedModelError  # noqa: E402
from tests.runtime.backend import GraphoptBackend, claimed_ops, node_ops, outputs_match  # noqa: E402

EXCLUDED = {
    r"BFLOAT16|bfloat16|FLOAT8|e4m3|e5m2|e8m0|FLOAT4|float4e2m1|INT4|int4|INT2|int2":
        "element types numpy has no native dtype for (bfloat16, float8, float4, int4, int2)",
    r"^test_equal_string": "string tensors",
    r"^test_identity_(sequence|opt)$": "sequence and optional values (tensors only)",
    r"^test_batchnorm_.*training_mode": "BatchNormalization training_mode=1 (inference runtime)",
    r"blocked": "blocked quantization (block_size)",
    r"^test_resize_.*(cubic|antialias)": "Resize mode=cubic and antialias=1",
    r"^test_maxpool_with_argmax_2d_precomputed_strides$": "MaxPool storage_order=1",
    r"^test_training_dropout": "Dropout in training mode (random masks; inference runtime)",
}


def _excluded_reason(name: str) -> str | None:
    return next((reason for pattern, reason in EXCLUDED.items() if re.search(pattern, name)), None)


def _claimed_tests():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the suite's generators warn about overflowing casts
        tests = load_model_tests(kind="node")
    claimed = claimed_ops()
    return [t for t in tests if node_ops(t.model) <= claimed]


CASES = _claimed_tests()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node(case):
    reason = _excluded_reason(case.name)
    if reason is not None:
        with pytest.raises(UnsupportedModelError):
            GraphoptBackend.prepare(case.model)
        pytest.skip(f"excluded: {reason}")
    rep = GraphoptBackend.prepare(case.model)
    for inputs, outputs in case.data_sets:
        outputs_match(list(outputs), rep.run(list(inputs)), case.rtol, case.atol)


def test_every_claimed_op_has_conformance_tests():
    covered = set().union(*(node_ops(c.model) for c in CASES))
    assert claimed_ops() - covered == set()
