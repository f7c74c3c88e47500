"""Slow, obviously-correct numpy references for the compiled kernels."""
import numpy as np

VNNI_K_GROUP = 4
VNNI_N_PANEL = 16


def pack_weights_vnni_reference(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same contract as :func:`graphopt.kernels.pack_weights_vnni`, written with numpy reshapes."""
    k_dim, n_dim = w.shape
    k_pad = -k_dim % VNNI_K_GROUP
    n_pad = -n_dim % VNNI_N_PANEL
    padded = np.pad(w.astype(np.int8), ((0, k_pad), (0, n_pad)))
    k_groups = padded.shape[0] // VNNI_K_GROUP
    n_panels = padded.shape[1] // VNNI_N_PANEL
    # [K/4, 4, N/16, 16] -> [N/16, K/4, 16, 4]
    blocked = padded.reshape(k_groups, VNNI_K_GROUP, n_panels, VNNI_N_PANEL)
    packed = np.ascontiguousarray(blocked.transpose(2, 0, 3, 1))
    col_sums = w.astype(np.int32).sum(axis=0, dtype=np.int32)
    return packed, col_sums
