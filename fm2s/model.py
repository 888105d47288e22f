"""The FM2S network: three convolutions, about 3-4 thousand parameters.

No residual connection, no normalisation, zero "same" padding, biases on, as in the papers.
``models > 1`` packs that many independent networks into one module with grouped convolutions,
so several planes train in one forward pass without sharing a single weight.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

__all__ = ["FM2SNet", "count_parameters", "gemm_convs"]

HIDDEN = (24, 12)  # widths of the two hidden layers
NEGATIVE_SLOPE = 1e-3  # LeakyReLU slope of the reference


def gemm_convs() -> bool:
    """Whether one-channel networks on a CPU run their last convolution as GEMMs (see
    :class:`_ConvToOne`); ``FM2S_GEMM_CONVS=0`` in the environment turns this off (oneDNN's
    convolution, as before 0.10.0: for comparisons)."""
    return os.environ.get("FM2S_GEMM_CONVS", "1") != "0"


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
        hidden = self.act(self.body(self.act(self.head(x))))
        if self.models == 1 and self.channels == 1 and x.device.type == "cpu" and gemm_convs():
            return _ConvToOne.apply(hidden.contiguous(memory_format=torch.channels_last),
                                    self.tail.weight, self.tail.bias)
        return self.tail(hidden)

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


# --- The last convolution (12 -> 1 channel) as GEMMs (CPU) ----------------------------------
#
# oneDNN runs a 12 -> 1 channel 5 x 5 convolution of 7 crops of 48 x 48 at 7 GFLOP/s forward
# on one Zen 4 core whose SGEMM reaches 100 (3.5 ms forward and backward in float32, 1.9 in
# bfloat16). As GEMMs it takes 1.4 and 1.0 ms: forward, the k^2 partial products of every
# pixel's channels (one GEMM of the channels-last activations, a plain (pixels, channels)
# matrix), then k^2 shifted adds; backward, the k^2 shifted copies of the one-channel gradient
# (one strided copy) and two GEMMs. (The first convolution, 1 -> 24, gains nothing so written:
# oneDNN's is as fast inside the network.)


def _shifted(plane: torch.Tensor, k: int) -> torch.Tensor:
    """(k*k, B, H, W): the k x k shifted copies of ``plane`` (B, H, W), zero beyond its edges;
    copy ``dy * k + dx`` holds ``plane[b, i + dy - r, j + dx - r]`` (one strided copy)."""
    r = k // 2
    batch, height, width = plane.shape
    padded = torch.nn.functional.pad(plane, (r, r, r, r))
    rows, cols = height + 2 * r, width + 2 * r
    windows = padded.as_strided((k, k, batch, height, width), (cols, 1, rows * cols, cols, 1))
    return windows.reshape(k * k, batch, height, width)


def _gathered(columns: torch.Tensor, k: int) -> torch.Tensor:
    """The adjoint of :func:`_shifted`: (B, H, W) sum over d of copy d shifted back.

    Summed along x first (k shifted adds of k planes at once), then along y: 2 (k - 1) adds
    instead of k^2, half the time of plane-by-plane adds (their cost is per call)."""
    r = k // 2
    _, batch, height, width = columns.shape
    columns = columns.reshape(k, k, batch, height, width)
    rows = columns[:, r].clone()  # rows[dy][i, j] = sum over dx of columns[dy, dx][i, j+r-dx]
    for dx in range(k):
        n = max(width - abs(dx - r), 0)  # columns that stay inside the plane
        if dx < r:
            rows[..., width - n:] += columns[:, dx, ..., :n]
        elif dx > r:
            rows[..., :n] += columns[:, dx, ..., width - n:]
    out = rows[r].clone()
    for dy in range(k):
        n = max(height - abs(dy - r), 0)
        if dy < r:
            out[:, height - n:] += rows[dy, :, :n]
        elif dy > r:
            out[:, :n] += rows[dy, :, height - n:]
    return out


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """(B*H*W, C) view of a channels-last (B, C, H, W) tensor."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


class _ConvToOne(torch.autograd.Function):
    """conv2d of a channels-last (B, C, H, W) input to one channel, k x k, zero "same"
    padding."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        x, weight, bias = _autocast(x, weight, bias)
        with torch.autocast("cpu", enabled=False):
            return __class__._forward(ctx, x, weight, bias)

    @staticmethod
    def _forward(ctx, x, weight, bias):
        _, channels, k, _ = weight.shape
        batch, _, height, width = x.shape
        xs = _pixels(x)  # (pixels, C)
        w = weight.reshape(channels, k * k)  # (C, k^2)
        # The k^2 partial products are summed in float32 (as a convolution accumulates) and
        # rounded to the input's dtype once.
        columns = (w.t().float() @ xs.t().float()).reshape(k * k, batch, height, width)
        out = _gathered(columns, k).add_(bias.float()).to(x.dtype)
        ctx.save_for_backward(xs, w)
        ctx.k = k
        return out.reshape(batch, 1, height, width)

    @staticmethod
    def backward(ctx, grad):
        with torch.autocast("cpu", enabled=False):
            return __class__._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):
        xs, w = ctx.saved_tensors
        k = ctx.k
        batch, _, height, width = grad.shape
        # The gradient of partial product d at pixel p is grad[p - d + r]: shifted copy
        # k^2 - 1 - d, so the k^2 axis of the weights is reversed instead.
        columns = _shifted(grad.reshape(batch, height, width), k).reshape(k * k, -1)
        grad_x = columns.t() @ w.flip(1).t()  # (pixels, C)
        grad_x = grad_x.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
        grad_weight = (columns @ xs).flip(0).t().reshape(1, -1, k, k)  # (1, C, k, k)
        return grad_x, grad_weight, grad.sum().reshape(1)


def _autocast(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` in the CPU autocast dtype where autocast is on (as a convolution gets them);
    the caller then computes with autocast off, in the dtypes it chooses."""
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        return tuple(t.to(dtype) for t in tensors)
    return tensors
