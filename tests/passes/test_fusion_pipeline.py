import json

import onnx

from graphopt.optimize import build_pipeline, optimize_model
from graphopt.passes import PassContext
from graphopt.passes.fusion import fusion_passes
from tests.conftest import make_cluttered_cnn, make_linear_model

from .builders import ops


def test_fusion_runs_after_cleanup_unless_turned_off():
    ctx = PassContext()
    names = [p.name for p in build_pipeline(ctx)]
    fusion = [p.name for p in fusion_passes(ctx)]
    assert names[-len(fusion):] == fusion and names.index(fusion[0]) > names.index("constant-folding")
    assert not set(fusion) & {p.name for p in build_pipeline(ctx, fuse=False)}


def test_demo_model_folds_its_batchnorm():
    result = optimize_model(make_cluttered_cnn(), dims={"batch": 2})
    assert result.ok
    rewrites = {rule: n for r in result.reports for rule, n in r.rewrites.items()}
    assert rewrites["Conv+BatchNormalization"] == 1
    assert "BatchNormalization" not in ops(result.model)
    unfused = optimize_model(make_cluttered_cnn(), dims={"batch": 2}, fuse=False)
    assert len(result.model.graph.node) < len(unfused.model.graph.node)


def test_cli_no_fuse_skips_the_fusion_passes(tmp_path, cli):
    source = tmp_path / "m.onnx"
    onnx.save_model(make_linear_model(), str(source))
    fused = json.loads(cli("optimize", source, "-o", tmp_path / "a.onnx", "--json").stdout)
    plain = json.loads(cli("optimize", source, "-o", tmp_path / "b.onnx", "--json", "--no-fuse").stdout)
    assert "MatMul+Add→Gemm" in {rule for p in fused["passes"] for rule in p["rewrites"]}
    assert not {p["name"] for p in plain["passes"]} & {p.name for p in fusion_passes(PassContext())}
    assert fused["nodes_after"] < plain["nodes_after"]
