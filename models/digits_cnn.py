"""``digits-cnn``: a small CNN for sklearn's 8x8 digits, trained in seconds on a CPU.

``digits_cnn()`` returns the trained network: its weights are read back from the shipped
``digits_cnn.onnx``, whose initializers carry the PyTorch parameter names. ``train_digits_cnn``
is how that file was made (``make models``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from graphopt.errors import GraphoptError

from . import DIGITS_ONNX

# Pixel values of load_digits are integers 0..16; the model takes them scaled to 0..1.
PIXEL_MAX = 16.0


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.2),
                                        nn.Linear(64, num_classes))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image))


def digits_cnn(trained: bool = True, seed: int = 0) -> DigitsCNN:
    torch.manual_seed(seed)
    model = DigitsCNN()
    if trained:
        model.load_state_dict(_state_from_onnx(model))
    return model


def _state_from_onnx(model: DigitsCNN) -> dict[str, torch.Tensor]:
    import onnx
    from onnx import numpy_helper

    if not DIGITS_ONNX.is_file():
        raise GraphoptError(f"{DIGITS_ONNX}: missing", "regenerate the shipped files with: make models")
    weights = {t.name: t for t in onnx.load(str(DIGITS_ONNX)).graph.initializer}
    missing = [name for name in model.state_dict() if name not in weights]
    if missing:
        raise GraphoptError(f"{DIGITS_ONNX}: no initializer for {', '.join(missing)}",
                            "regenerate the shipped files with: make models")
    return {name: torch.from_numpy(numpy_helper.to_array(weights[name]).copy()) for name in model.state_dict()}


def train_digits_cnn(images: np.ndarray, labels: np.ndarray, *, epochs: int = 40, seed: int = 0) -> DigitsCNN:
    """Train on ``images`` [n, 1, 8, 8] (scaled to 0..1) with Adam; deterministic for a seed."""
    torch.manual_seed(seed)
    model = digits_cnn(trained=False, seed=seed).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()
