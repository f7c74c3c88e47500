"""``yolo-head``: a tiny single-scale detector whose one output mixes two very different ranges.

Each of the 20x20 cells of a 640x640 image predicts one box ``(cx, cy, w, h)`` in pixels (0-640)
and 80 class scores (0-1), concatenated into ``[batch, 400, 84]``: the tensor where a single
per-tensor quantization scale, sized for the boxes, rounds every score to zero.

The box decode scales by powers of two (the cell stride, ``MAX_BOX_SIZE``), which are exact in
float32, so onnxruntime and torch agree on the pixel values to within an ulp of the sum.
"""
import torch
from torch import nn

from .batchnorm import randomize_batchnorm

IMAGE_SIZE = 640
STRIDE = 32  # five stride-2 convs: a 20x20 grid of cells
MAX_BOX_SIZE = 256


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class YoloHead(nn.Module):
    def __init__(self, num_classes: int = 80, widths: tuple[int, ...] = (8, 16, 32, 64, 64)):
        super().__init__()
        layers, c_in = [], 3
        for width in widths:  # five stride-2 convs: 640 -> 20
            layers.append(_conv(c_in, width, 2))
            c_in = width
        self.backbone = nn.Sequential(*layers)
        self.box = nn.Conv2d(c_in, 4, 1)
        self.cls = nn.Conv2d(c_in, num_classes, 1)
        cells = torch.arange(IMAGE_SIZE // STRIDE, dtype=torch.float32)
        grid_y, grid_x = torch.meshgrid(cells, cells, indexing="ij")
        self.register_buffer("grid", torch.stack([grid_x, grid_y])[None])  # [1, 2, 20, 20]: cell (x, y)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.backbone(image)
        box = torch.sigmoid(self.box(features))
        centers = (box[:, :2] + self.grid) * STRIDE  # anywhere in the image: 0-640
        sizes = box[:, 2:] * MAX_BOX_SIZE
        boxes = torch.cat([centers, sizes], 1)
        scores = torch.sigmoid(self.cls(features))
        # [batch, channels, h, w] -> [batch, h*w, channels]
        detections = torch.cat([boxes, scores], 1).flatten(2).transpose(1, 2)
        return detections


def yolo_head(seed: int = 0) -> YoloHead:
    torch.manual_seed(seed)
    return randomize_batchnorm(YoloHead(), seed)
