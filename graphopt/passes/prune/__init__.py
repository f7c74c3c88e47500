"""The prune family: passes that zero weights (magnitude, Wanda, OBS; unstructured or N:M) or remove
whole channels. ``graphopt.prune.prune`` chooses the layers, collects calibration statistics and runs them."""
from graphopt.passes.prune.channel import ChannelPruning
from graphopt.passes.prune.layers import DEFAULT_EXCLUDE, TINY_LAYER_PARAMS, Layer, prunable_layers, selected_layers
from graphopt.passes.prune.magnitude import MagnitudePruning
from graphopt.passes.prune.n_m import is_n_m_sparse, parse_pattern
from graphopt.passes.prune.obs import OBSPruning
from graphopt.passes.prune.unstructured import SCOPES, allocate_sparsity
from graphopt.passes.prune.wanda import WandaPruning

__all__ = [
    "DEFAULT_EXCLUDE", "SCOPES", "TINY_LAYER_PARAMS", "ChannelPruning", "Layer", "MagnitudePruning", "OBSPruning",
    "WandaPruning", "allocate_sparsity", "is_n_m_sparse", "parse_pattern", "prunable_layers", "selected_layers",
]
