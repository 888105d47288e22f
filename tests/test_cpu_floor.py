"""Issue 41: the CPU fast paths give the results of the plain ones, deterministically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fm2s import make_settings
from fm2s.model import FM2SNet, _ConvToOne
from fm2s.noise import median_target, region_means
from fm2s.train import TrainingSet, _FusedAdam, fit, uses_bfloat16

CL = torch.channels_last


def _grads(fn, inputs, grad):
    out = fn(*inputs)
    wanted = [t for t in inputs if t.requires_grad]
    return out, torch.autograd.grad(out, wanted, grad.to(out.dtype))


@pytest.mark.parametrize("mixed", [False, True])
def test_gemm_convolution_matches_conv2d(mixed):
    """Forward and every gradient of the GEMM convolution are conv2d's, to rounding."""
    gen = torch.Generator().manual_seed(3)
    c_in, c_out = 12, 1
    x = torch.randn(3, c_in, 21, 17, generator=gen).contiguous(memory_format=CL)
    x.requires_grad_(c_in > 1)
    w = torch.randn(c_out, c_in, 5, 5, generator=gen, requires_grad=True)
    b = torch.randn(c_out, generator=gen, requires_grad=True)
    fast = _ConvToOne.apply
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
        out, grads = _grads(fast, (x, w, b), torch.ones(3, c_out, 21, 17))
        ref, ref_grads = _grads(lambda *a: F.conv2d(*a, padding=2), (x, w, b),
                                torch.ones(3, c_out, 21, 17))
    assert out.dtype == ref.dtype and out.shape == ref.shape
    # bfloat16: one rounding of each sum (8 bits) apart at most
    tol = 2**-7 if mixed else 1e-5
    scale = ref.float().abs().max()
    assert (out.float() - ref.float()).abs().max() <= tol * scale
    for g, r in zip(grads, ref_grads, strict=True):
        assert g.dtype == r.dtype and g.shape == r.shape
        assert (g.float() - r.float()).abs().max() <= tol * r.float().abs().max()


def test_network_forward_matches_oneDNN(monkeypatch):
    net = FM2SNet(1, 5)
    net.reset_parameters([torch.Generator().manual_seed(1)])
    x = torch.rand(2, 1, 40, 33, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fast = net(x.contiguous(memory_format=CL))
        monkeypatch.setenv("FM2S_GEMM_CONVS", "0")
        plain = net(x.contiguous(memory_format=CL))
    assert torch.allclose(fast, plain, atol=1e-5, rtol=1e-5)


def _training_set(seed: int = 0) -> TrainingSet:
    rng = np.random.default_rng(seed)
    plane = rng.poisson(rng.uniform(2, 40, (96, 96))).astype(np.float32) / 64
    settings = make_settings()
    target = median_target(plane, settings.median_size)
    means = region_means(target, settings.region_size, settings.mean_clamp)
    return TrainingSet([torch.from_numpy(plane)], [torch.from_numpy(target)],
                       [torch.from_numpy(means)], torch.Generator().manual_seed(seed),
                       torch.Generator().manual_seed(seed ^ 0x5EED))


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_training_is_bitwise_deterministic(precision):
    """The same seed twice gives bitwise the same network (on this thread count)."""
    if precision == "bfloat16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("no native bfloat16 on this CPU")
    settings = make_settings().replace(gain=0.01, read_var=1e-4, samples=40,
                                       precision=precision)
    first = fit([_training_set()], settings, torch.device("cpu"))
    second = fit([_training_set()], settings, torch.device("cpu"))
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_auto_precision_can_be_forced(monkeypatch):
    settings = make_settings()
    assert settings.precision == "auto"
    monkeypatch.setenv("FM2S_AUTO_PRECISION", "float32")
    assert not uses_bfloat16(settings, torch.device("cpu"))
    monkeypatch.setenv("FM2S_AUTO_PRECISION", "bfloat16")
    assert uses_bfloat16(settings, torch.device("cpu"))
    # an explicit precision is never overridden
    assert not uses_bfloat16(settings.replace(precision="float32"), torch.device("cpu"))


def test_fused_adam_is_torch_adam():
    """fit's own fused Adam gives bitwise torch.optim.Adam(fused=True)'s weights."""
    gen = torch.Generator().manual_seed(5)
    params = [torch.randn(12, 24, 3, 3, generator=gen), torch.randn(12, generator=gen)]
    mine = [p.clone().requires_grad_() for p in params]
    theirs = [p.clone().requires_grad_() for p in params]
    ours, reference = _FusedAdam(mine, lr=1e-3), torch.optim.Adam(theirs, lr=1e-3, fused=True)
    for step in range(5):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        for optimizer, group in ((ours, mine), (reference, theirs)):
            optimizer.zero_grad(set_to_none=True)
            optimizer.param_groups[0]["lr"] = 1e-3 / (step + 1)
            for p, g in zip(group, grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
        for a, b in zip(mine, theirs, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (4, 2), (6, 9)])
def test_gemm_convolution_of_planes_smaller_than_the_kernel(shape):
    """The shifted adds stay inside planes narrower or lower than the 5 x 5 kernel."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 12, *shape, generator=gen)
    x = x.contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(1, 12, 5, 5, generator=gen, requires_grad=True)
    b = torch.randn(1, generator=gen, requires_grad=True)
    grad = torch.randn(2, 1, *shape, generator=gen)
    out, grads = _grads(_ConvToOne.apply, (x, w, b), grad)
    ref, ref_grads = _grads(lambda *a: F.conv2d(*a, padding=2), (x, w, b), grad)
    # float32 sums: rounding apart, relative to the largest value
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    for g, r in zip(grads, ref_grads, strict=True):
        assert (g - r).abs().max() <= 1e-5 * r.abs().max()
