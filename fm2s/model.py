"""The FM2S network: three convolutions, about 3-4 thousand parameters.

No residual connection, no normalisation, zero "same" padding, biases on, as in the papers.
``models > 1`` packs that many independent networks into one module with grouped convolutions,
so several planes train in one forward pass without sharing a single weight.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["FM2SNet", "count_parameters"]

HIDDEN = (24, 12)  # widths of the two hidden layers
NEGATIVE_SLOPE = 1e-3  # LeakyReLU slope of the reference


class FM2SNet(nn.Module):
    """conv k x k (n->24), LeakyReLU, conv 3x3 (24->12), LeakyReLU, conv k x k (12->n).

    Parameters
    ----------
    channels : int
        Channel amplification ``n`` (input and output channels of one model).
    kernel_size : int
        Size of the first and last kernels: 3 for FM2S v1, 5 for v2.
    models : int
        Number of independent models packed side by side (grouped convolutions). The input then
        has ``models * channels`` channels, model ``g`` owning channels ``g*n .. (g+1)*n - 1``.
    """

    def __init__(self, channels: int, kernel_size: int, models: int = 1):
        super().__init__()
        self.channels, self.kernel_size, self.models = channels, kernel_size, models
        width1, width2 = HIDDEN
        g = models

        def conv(c_in, c_out, k):
            return nn.Conv2d(g * c_in, g * c_out, k, padding=k // 2, groups=g)

        self.head = conv(channels, width1, kernel_size)
        self.body = conv(width1, width2, 3)
        self.tail = conv(width2, channels, kernel_size)
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE)

    @property
    def receptive_radius(self) -> int:
        """Pixels of context on each side that one output pixel depends on."""
        return 2 * (self.kernel_size // 2) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, models * n, H, W) -> (B, models * n, H, W)
        return self.tail(self.act(self.body(self.act(self.head(x)))))

    @torch.no_grad()
    def reset_parameters(self, generators: list[torch.Generator]):
        """PyTorch's default init (uniform in +-1/sqrt(fan_in)), one generator per model.

        Drawing each model's weights from its own generator makes a plane's network independent
        of which other planes share the module.
        """
        if len(generators) != self.models:
            msg = f"need one generator per model ({self.models}), got {len(generators)}"
            raise ValueError(msg)
        for conv in (self.head, self.body, self.tail):
            c_out = conv.out_channels // self.models
            bound = 1.0 / math.sqrt(conv.weight[0].numel())
            for g, generator in enumerate(generators):
                rows = slice(g * c_out, (g + 1) * c_out)
                weight = torch.empty_like(conv.weight[rows], device="cpu")
                bias = torch.empty_like(conv.bias[rows], device="cpu")
                weight.uniform_(-bound, bound, generator=generator)
                bias.uniform_(-bound, bound, generator=generator)
                conv.weight[rows] = weight.to(conv.weight.device)
                conv.bias[rows] = bias.to(conv.bias.device)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (for ``models > 1``, all models together)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
