"""The fusion family: passes that replace chains of nodes with fewer, standard ONNX nodes."""
from graphopt.passes.fusion.attention import AttentionFusion
from graphopt.passes.fusion.batchnorm import BatchNormFolding
from graphopt.passes.fusion.gelu import GeluFusion
from graphopt.passes.fusion.hard_activation import HardActivationFusion
from graphopt.passes.fusion.layer_norm import LayerNormFusion
from graphopt.passes.fusion.layout_chains import LayoutChainCollapse
from graphopt.passes.fusion.linear_affine import AffineFolding
from graphopt.passes.pipeline import Pass, PassContext


def fusion_passes(ctx: PassContext) -> list[Pass]:
    """The default fusion pipeline, run after cleanup (which has folded constants and inferred shapes).

    Order: layout chains first, so that Reshape pairs hide no Conv or MatMul from the folds;
    BN first of the folds, into its layer; then the activation patterns, before the affine folds,
    which would otherwise fold HardSwish's final ``/6`` (or a GELU's ``·0.5``) into the next
    Conv and leave the rest of the chain unrecognisable; then the affine folds (a lone BN's
    Mul+Add, a Paddle "scale and shift" after a Conv); attention last.
    """
    return [
        LayoutChainCollapse(),
        BatchNormFolding(),
        HardActivationFusion(),
        GeluFusion(),
        LayerNormFusion(),
        AffineFolding(),
        AttentionFusion(),
    ]


__all__ = [
    "AffineFolding", "AttentionFusion", "BatchNormFolding", "GeluFusion", "HardActivationFusion",
    "LayerNormFusion", "LayoutChainCollapse", "fusion_passes",
]
