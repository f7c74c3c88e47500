"""The cleanup family: passes that simplify a graph without changing what it computes."""
from graphopt.passes.cleanup.constant_folding import ConstantFolding
from graphopt.passes.cleanup.dead_code import DeadCodeElimination
from graphopt.passes.cleanup.initializer_dedup import InitializerDeduplication
from graphopt.passes.cleanup.noop_elimination import NoOpElimination
from graphopt.passes.cleanup.opset_upgrade import OpsetUpgrade
from graphopt.passes.cleanup.shape_inference import ShapeInference
from graphopt.passes.pipeline import Pass, PassContext


def cleanup_passes(ctx: PassContext) -> list[Pass]:
    """The default cleanup pipeline.

    Order: dead code first, because the PassManager's ``graph.cleanup()`` after every pass would
    otherwise drop the input's dead nodes uncounted (dead nodes that later passes leave behind
    show in those passes' node counts). Then the opset upgrade, when ``ctx.target_opset`` is set,
    so every later pass sees the final ops; shapes before folding (Shape/Gather folding reads
    them); no-ops before folding too (an Identity or same-type Cast between Shape and Gather hides
    a foldable pair); shapes and no-ops again after folding, because folded shape tensors make
    Reshapes provably no-ops; last, deduplicate the folded constants.
    """
    passes: list[Pass] = [DeadCodeElimination()]
    if ctx.target_opset is not None:
        passes.append(OpsetUpgrade())
    return passes + [
        ShapeInference(),
        NoOpElimination(),
        ConstantFolding(),
        ShapeInference(),
        NoOpElimination(),
        InitializerDeduplication(),
    ]


__all__ = [
    "ConstantFolding", "DeadCodeElimination", "InitializerDeduplication", "NoOpElimination",
    "OpsetUpgrade", "ShapeInference", "cleanup_passes",
]
