"""``simplenet``: the classic small CNN of framework tutorials."""
import torch
from torch import nn


def _pooled(size: int) -> int:
    # A padded 3x3 conv keeps the size; each 2x2 max pool halves it, rounding down.
    return size // 2 // 2


class SimpleNet(nn.Module):
    """conv3x3 3->64, conv3x3 64->128, each with ReLU and 2x2 max pool; fc->1000, fc->10."""

    def __init__(self, image_size: tuple[int, int] = (32, 32), num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = 128 * _pooled(image_size[0]) * _pooled(image_size[1])
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 1000), nn.ReLU(), nn.Linear(1000, num_classes),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image))


def simplenet(input_shapes: dict[str, tuple[int, ...]] | None = None, seed: int = 0) -> SimpleNet:
    torch.manual_seed(seed)
    height, width = (input_shapes or {}).get("image", (1, 3, 32, 32))[2:]
    return SimpleNet((height, width))
