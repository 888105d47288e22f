"""The CUDA path on a real GPU: determinism of batched inference, and CPU against CUDA (run by
hand, on a machine with a GPU; ``benchmarks/gpu.sh`` runs it with the speed benchmark).

On one synthetic (t, c, z) stack with known truth, trained once on CUDA (shared networks of
several groups packed into grouped passes):

- the stack applied in chunks of 1, 7 and 64 planes (as the workflow's ``planes_per_job``)
  must give identical arrays: inference batches are padded to a fixed size
  (:func:`fm2s.devices.inference_batch`), so a plane's kernels do not depend on its chunk;
- the same stack trained and applied on the CPU: PSNR against the truth, side by side, and
  how far CUDA's pixels are from the CPU's (bfloat16 training on both where supported, so
  they differ by float rounding, not by method).

Usage::

    python benchmarks/cuda_check.py                  # prints a Markdown table, exit 1 on a
    python benchmarks/cuda_check.py --size 256       # determinism failure
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from skimage.metrics import peak_signal_noise_ratio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fm2s.devices import resolve_device, set_threads  # noqa: E402
from fm2s.engine import apply_model, train_stack  # noqa: E402
from fm2s.settings import make_settings  # noqa: E402
from fm2s.stacks import open_stack  # noqa: E402
from fm2s.synthetic import clean_plane, noisy_plane  # noqa: E402


def make_stack(path: Path, t: int, c: int, z: int, size: int) -> np.ndarray:
    """A (t, c, z) stack of independent noisy copies of one clean plane per channel."""
    clean = np.stack([0.05 + 0.95 * clean_plane((size, size), seed=10 + ch) for ch in range(c)])
    data = np.empty((t, c, z, size, size), np.uint16)
    for i in range(t):
        for ch in range(c):
            for k in range(z):
                data[i, ch, k] = noisy_plane(clean[ch], photons=30.0, read_noise=0.02,
                                             seed=1000 * i + 100 * ch + k, dtype=np.uint16)
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TCZYX"})
    return (clean * 65535).round().astype(np.uint16)


def apply_in_chunks(stack, model, device, per_job: int) -> dict:
    keys = stack.plane_keys()
    out = {}
    for start in range(0, len(keys), per_job):
        part = keys[start:start + per_job]
        for key, result in zip(part, apply_model(stack, model, part, device=device), strict=True):
            out[tuple(key)] = result.image
    return out


def digest(planes: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(planes):
        h.update(planes[key].tobytes())
    return h.hexdigest()[:16]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--t", type=int, default=8)
    parser.add_argument("--c", type=int, default=2)
    parser.add_argument("--z", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)
    cuda = resolve_device(args.device)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(cuda)}", flush=True)
    settings = make_settings("auto", group_size=16)  # several groups per channel
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stack.ome.tif"
        truth = make_stack(path, args.t, args.c, args.z, args.size)
        with open_stack(path) as stack:
            began = time.perf_counter()
            model = train_stack(stack, settings, seed=0, device=cuda)
            trained = time.perf_counter() - began
            runs = {}
            for per_job in (1, 7, 64):
                began = time.perf_counter()
                runs[per_job] = apply_in_chunks(stack, model, cuda, per_job)
                print(f"cuda, {per_job} planes per job: {digest(runs[per_job])} in "
                      f"{time.perf_counter() - began:.2f} s", flush=True)
            began = time.perf_counter()
            cpu_model = train_stack(stack, settings, seed=0, device=torch.device("cpu"))
            cpu = apply_in_chunks(stack, cpu_model, torch.device("cpu"), 64)
            cpu_seconds = time.perf_counter() - began
    same = len({digest(r) for r in runs.values()}) == 1
    n = len(cpu)

    def mean_psnr(planes: dict) -> float:
        return float(np.mean([peak_signal_noise_ratio(truth[k[1]], planes[k], data_range=65535)
                              for k in planes]))

    gap = max(int(np.abs(runs[64][k].astype(int) - cpu[k].astype(int)).max()) for k in cpu)
    print(f"\n{n} planes of {args.size}x{args.size}, {len(model.networks)} networks")
    print("| device | PSNR (dB) | seconds (train + apply) |")
    print("|---|---|---|")
    print(f"| cuda | {mean_psnr(runs[64]):.2f} | {trained:.1f} + apply above |")
    print(f"| cpu ({args.threads} threads) | {mean_psnr(cpu):.2f} | {cpu_seconds:.1f} |")
    print(f"\nidentical for 1, 7, 64 planes per job: {same}; largest CUDA-CPU difference: "
          f"{gap} DN of 65535")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
