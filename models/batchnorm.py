"""Seeded, realistic statistics for the BatchNorm layers of randomly initialised zoo models.

A fresh BatchNorm (mean 0, var 1, scale 1, shift 0) is the identity in eval mode, so folding it
into a Conv would be tested on a no-op; these statistics make the fold change the weights.
"""
import torch
from torch import nn


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
    return model
