"""Training FM2S networks, and applying them.

One call trains several independent networks, each from its own :class:`TrainingSet`: one
plane (the paper's network per plane) or several planes of a stack that share a network.
Networks trained together share a grouped convolution (one forward pass for all), never a
weight; every random draw of a network (weights, planes and crop positions, noise) comes from
its own generators, and each network's loss is reduced on its own, so a network does not
depend on its companions.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .model import FM2SNet
from .noise import synthesize, synthesize_poisson_gaussian
from .settings import Settings

__all__ = ["TrainingSet", "extract_model", "fit", "learning_rate", "predict", "predict_batch",
           "training_progress", "uses_bfloat16"]

#: ``callback(done, total, networks)``: optimiser steps done of `total`, for a pass that trains
#: `networks` networks together (see :func:`training_progress`).
ProgressCallback = Callable[[int, int, int], None]

# The callbacks of the training_progress blocks now open, innermost last. Process-wide rather
# than a context variable: fit() may run in a worker thread of the caller's.
_progress_callbacks: list[ProgressCallback] = []


@contextmanager
def training_progress(callback: ProgressCallback) -> Iterator[None]:
    """Report the progress of every :func:`fit` that runs inside the block to `callback`.

    ``callback(done, total, networks)`` is called with ``done = 0`` when a grouped training
    pass of `networks` networks starts, then after each of its `total` optimiser steps (warm-up
    steps included). It only observes: it draws no random numbers and changes no state of the
    training, so results are bitwise those without it. Blocks nest; the innermost callback is
    the one called. An exception raised by `callback` stops the training.
    """
    _progress_callbacks.append(callback)
    try:
        yield
    finally:
        _progress_callbacks.remove(callback)


@dataclass
class TrainingSet:
    """What training one network needs: its planes on the [0, 1] scale, as (Y, X) float32
    tensors of one shape, and its generators.

    With one plane, every draw is that of the paper's network per plane; with several, each
    crop (or full-frame sample) first draws which plane it comes from.
    """

    noisy: list[torch.Tensor]  # the real planes x
    target: list[torch.Tensor]  # their median-filtered planes c
    means: list[torch.Tensor]  # their region means M, per pixel
    init_generator: torch.Generator  # CPU: weights, planes and crop positions
    noise_generator: torch.Generator  # on the training device: noise draws


def uses_bfloat16(settings: Settings, device: torch.device) -> bool:
    """Whether training runs in bfloat16 mixed precision on ``device``.

    ``precision="auto"`` uses it where the device computes bfloat16 natively; the environment
    variable ``FM2S_AUTO_PRECISION`` (``float32`` or ``bfloat16``) overrides that choice, so a
    benchmark can show the float32 path of a CPU without native bfloat16 on one with it.
    """
    if settings.precision != "auto":
        return settings.precision == "bfloat16"
    forced = os.environ.get("FM2S_AUTO_PRECISION", "")
    if forced in ("float32", "bfloat16"):  # benchmarks: the other kind of CPU on this one
        return forced == "bfloat16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def learning_rate(settings: Settings, step: int) -> float:
    """Learning rate at synthetic-sample step ``step`` (0-based, warm-up steps excluded)."""
    lr = settings.lr
    if settings.lr_schedule == "step":
        return lr * settings.lr_gamma ** sum(step >= m for m in settings.lr_milestones)
    if settings.lr_schedule == "onecycle":
        total = settings.total_steps
        ramp = max(1, total // 10)
        if step < ramp:
            return lr * (0.1 + 0.9 * step / ramp)
        progress = (step - ramp) / max(1, total - ramp)
        return lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return lr


def group_key(settings: Settings, shape: tuple[int, int]) -> tuple[int, int]:
    """Shape of a plane's training crops; planes with equal keys can train together."""
    if settings.crop_size == 0:
        return shape
    return min(settings.crop_size, shape[0]), min(settings.crop_size, shape[1])


def _draw_batch(data: TrainingSet, settings: Settings, crop: tuple[int, int]):
    """Crops of (target, means) for one step, each repeated into the n channels."""
    n, batch = settings.channels, settings.batch_size
    height, width = data.target[0].shape
    generator, count = data.init_generator, len(data.target)
    if crop == (height, width):
        which = torch.randint(0, count, (1,), generator=generator).item() if count > 1 else 0
        target, means = data.target[which][None, None], data.means[which][None, None]
    else:
        # One plane draws no plane indices: the same draws as a network of its own.
        which = (torch.randint(0, count, (batch,), generator=generator).tolist()
                 if count > 1 else [0] * batch)
        tops = torch.randint(0, height - crop[0] + 1, (batch,), generator=generator)
        lefts = torch.randint(0, width - crop[1] + 1, (batch,), generator=generator)
        windows = [(p, (slice(t, t + crop[0]), slice(s, s + crop[1])))
                   for p, t, s in zip(which, tops.tolist(), lefts.tolist(), strict=True)]
        target = torch.stack([data.target[p][w] for p, w in windows])[:, None]  # (B, 1, h, w)
        means = torch.stack([data.means[p][w] for p, w in windows])[:, None]
    target = target.expand(-1, n, -1, -1).contiguous()  # (B, n, h, w)
    return target, means


def _synthesize(target, means, settings: Settings, generator) -> torch.Tensor:
    if settings.noise_model == "poisson-gaussian":
        return synthesize_poisson_gaussian(target, gain=settings.gain, read_var=settings.read_var,
                                           corr=settings.noise_corr, generator=generator,
                                           line_corr=settings.noise_line_corr)
    return synthesize(target, means, k_g=settings.k_g, k_p=settings.k_p, lam_p=settings.lam_p,
                      generator=generator)


def fit(planes: list[TrainingSet], settings: Settings, device: torch.device) -> FM2SNet:
    """Train one FM2S network per training set, all in one grouped forward pass.

    Parameters
    ----------
    planes : list of TrainingSet
        Training sets whose planes have batches of equal shapes (equal :func:`group_key`).
    settings : Settings
    device : torch.device

    Returns
    -------
    FM2SNet
        ``models == len(planes)``; use :func:`extract_model` to get network ``g``.

    Progress goes to the callback of the innermost enclosing :func:`training_progress` block.
    """
    if device.type == "cpu":
        _keep_freed_buffers()
    n, count = settings.channels, len(planes)
    crop = group_key(settings, tuple(planes[0].target[0].shape))
    net = FM2SNet(n, settings.kernel_size, models=count)
    net.reset_parameters([p.init_generator for p in planes])
    net = net.to(device=device, memory_format=torch.channels_last)
    if device.type == "cpu":
        optimizer = _FusedAdam(list(net.parameters()), lr=settings.lr)
    else:
        optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    mixed = uses_bfloat16(settings, device)

    def step(inputs: torch.Tensor, targets: torch.Tensor, lr: float):
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed):
            output = net(inputs.contiguous(memory_format=torch.channels_last)).float()
        # One mean per plane, then their sum: plane g's gradient is that of its own loss.
        error = (output - targets).square().unflatten(1, (count, n))  # (B, G, n, h, w)
        error.mean(dim=(0, 2, 3, 4)).sum().backward()
        optimizer.step()

    report = _progress_callbacks[-1] if _progress_callbacks else _no_report
    total = settings.warmup_steps + settings.total_steps
    report(0, total, count)
    if settings.warmup_steps:
        # v2's stage 1: a few steps from the real noisy plane to its median (a shared network
        # takes its planes in turn).
        for index in range(settings.warmup_steps):
            inputs = torch.cat([p.noisy[index % len(p.noisy)][None, None].expand(-1, n, -1, -1)
                                for p in planes], 1)
            targets = torch.cat([p.target[index % len(p.target)][None, None]
                                 .expand(-1, n, -1, -1) for p in planes], 1)
            step(inputs, targets, settings.lr)
            report(index + 1, total, count)

    index = 0
    with _training_threads(settings, device) as prefetch:
        for inputs, targets in prefetch(_samples(planes, settings, crop, device)):
            for _ in range(settings.steps_per_sample):
                step(inputs, targets, learning_rate(settings, index))
                index += 1
                report(settings.warmup_steps + index, total, count)
    return net


class _FusedAdam:
    """``torch.optim.Adam(params, lr, fused=True)``, bitwise, for CPU training: the same
    kernel (one for the six tensors of a step instead of about 40), without the optimiser's
    machinery. Constructing a ``torch.optim`` optimiser imports ``torch._dynamo`` (about 1
    CPU-s, once per process: a tenth of one plane's training) and its ``step`` costs about
    0.3 ms of Python per call, as much as the update itself.
    """

    def __init__(self, params: list[torch.Tensor], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.betas, self.eps = params, betas, eps
        self.param_groups = [{"lr": lr}]  # torch.optim's interface for the learning rate
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format)
                         for p in params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format)
                            for p in params]
        self.steps = [torch.zeros((), dtype=torch.float32) for _ in params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        torch._foreach_add_(self.steps, 1)
        torch._fused_adam_(self.params, [p.grad for p in self.params], self.exp_avgs,
                           self.exp_avg_sqs, [], self.steps, amsgrad=False,
                           lr=self.param_groups[0]["lr"], beta1=self.betas[0],
                           beta2=self.betas[1], weight_decay=0.0, eps=self.eps,
                           maximize=False, grad_scale=None, found_inf=None)


def _no_report(done: int, total: int, networks: int) -> None:
    """The progress callback outside any :func:`training_progress` block."""


@functools.cache
def _keep_freed_buffers() -> None:
    """Make glibc keep freed activation buffers for reuse instead of unmapping them.

    A training step frees and re-allocates the same activation buffers (25 MB each for a
    512 x 512 plane in full-frame training). glibc serves such blocks with ``mmap`` and hands
    them back to the system when freed (or trims them off the heap), so every step page-faults
    them in again: a quarter of a v2 step's time. Raising the mmap threshold to its maximum
    (32 MB) and the trim threshold to 1 GB keeps them in the heap: 1.37x faster v2 steps on
    this project's 2-core CPU. Process-wide; peak memory is unchanged, but freed memory
    returns to the system only at exit. Does nothing where libc is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 1 << 30)


def _samples(planes: list[TrainingSet], settings: Settings, crop: tuple[int, int],
             device: torch.device):
    """(inputs, targets) of every synthetic sample in turn, all planes side by side."""
    for _ in range(settings.samples):
        batches = [_draw_batch(p, settings, crop) for p in planes]
        targets = torch.cat([t for t, _ in batches], 1).to(device)
        noisy = [_synthesize(t.to(device), m.to(device), settings, p.noise_generator)
                 for (t, m), p in zip(batches, planes, strict=True)]
        yield torch.cat(noisy, 1), targets


def _one_ahead(items):
    """Iterate ``items`` with the next item computed in a worker thread meanwhile."""
    with ThreadPoolExecutor(1, thread_name_prefix="fm2s-noise") as pool:
        pending = pool.submit(next, items, None)
        while (item := pending.result()) is not None:
            pending = pool.submit(next, items, None)
            yield item


@contextmanager
def _training_threads(settings: Settings, device: torch.device):
    """Where the noise of the next sample is drawn while this one trains.

    On a CPU with several threads, drawing a sample (``torch.poisson`` runs on one core) takes
    about as long as one training step on small crops, so where each sample serves one step
    (the ``fast`` recipe) one core draws the next sample while the others train: 1.25-1.35x
    faster on 2 cores. Samples serving several full-frame steps (v1, v2) cost little to draw
    and train faster on every core. The random draws happen in the same order either way, so
    the samples are identical.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or settings.steps_per_sample > 1:
        yield iter
        return
    torch.set_num_threads(threads - 1)
    try:
        yield _one_ahead
    finally:
        torch.set_num_threads(threads)


def extract_model(net: FM2SNet, index: int) -> FM2SNet:
    """Network ``index`` of a grouped :class:`FM2SNet`, as a stand-alone single model."""
    single = FM2SNet(net.channels, net.kernel_size, models=1)
    with torch.no_grad():
        for name in ("head", "body", "tail"):
            source, dest = getattr(net, name), getattr(single, name)
            rows = dest.out_channels
            dest.weight.copy_(source.weight[index * rows:(index + 1) * rows])
            dest.bias.copy_(source.bias[index * rows:(index + 1) * rows])
    return single.to(net.head.weight.device)


def predict(net: FM2SNet, noisy: np.ndarray, device: torch.device, tile: int = 512,
            turn_average: bool = False) -> np.ndarray:
    """Apply a single-model network to a plane: mean over the n outputs, clamped to [0, 1].

    Large planes are processed in ``tile`` x ``tile`` pieces with a margin of the network's
    receptive radius, which gives exactly the full-frame result at a fraction of the memory.

    Parameters
    ----------
    net : FM2SNet
        A single model (``models == 1``).
    noisy : ndarray (Y, X) of float32
        The real plane on the [0, 1] scale.
    device : torch.device
    tile : int
        Output tile side in pixels.
    turn_average : bool
        Also apply the network to the plane turned by 180 degrees and return the mean of the
        two outputs, the second turned back (see :class:`fm2s.settings.Settings`).

    Returns
    -------
    ndarray (Y, X) of float32
    """
    return predict_batch(net, noisy[None], device, tile=tile, turn_average=turn_average)[0]


def predict_batch(net: FM2SNet, noisy: np.ndarray, device: torch.device, tile: int = 512,
                  turn_average: bool = False, batch: int | None = None) -> np.ndarray:
    """:func:`predict` for planes of one shape, in one forward pass per tile.

    Parameters
    ----------
    net : FM2SNet
        A single model.
    noisy : ndarray (N, Y, X) of float32
        Planes on the [0, 1] scale.
    device : torch.device
    tile, turn_average
        As for :func:`predict`.
    batch : int, optional
        Pad every pass to this many planes (at least N). A pass of a fixed shape runs the
        same kernels whatever shares it, so a plane's result does not depend on which other
        planes were batched with it (on CUDA, where kernels are chosen by shape).

    Returns
    -------
    ndarray (N, Y, X) of float32
    """
    result = _predict_tiled(net, noisy, device, tile, batch)
    if turn_average:
        turned = _predict_tiled(net, np.ascontiguousarray(noisy[:, ::-1, ::-1]), device, tile,
                                batch)
        result = (result + turned[:, ::-1, ::-1]) * np.float32(0.5)
    return result


@torch.no_grad()
def _predict_tiled(net: FM2SNet, noisy: np.ndarray, device: torch.device, tile: int,
                   batch: int | None) -> np.ndarray:
    net = net.to(device=device, memory_format=torch.channels_last).eval()
    n, margin = net.channels, net.receptive_radius
    count, height, width = noisy.shape
    padded = max(count, batch or count)
    source = torch.from_numpy(noisy)
    if padded > count:
        source = torch.cat([source, source[:1].expand(padded - count, -1, -1)])
    result = np.empty((count, height, width), dtype=np.float32)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            y0, x0 = max(0, top - margin), max(0, left - margin)
            y1, x1 = min(height, bottom + margin), min(width, right + margin)
            window = source[:, y0:y1, x0:x1].to(device)[:, None].expand(-1, n, -1, -1)
            output = net(window.contiguous(memory_format=torch.channels_last))
            output = output.clamp_(0.0, 1.0).mean(dim=1)[:count]
            result[:, top:bottom, left:right] = output[:, top - y0:bottom - y0,
                                                       left - x0:right - x0].cpu().numpy()
    return result
