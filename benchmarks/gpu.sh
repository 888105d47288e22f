#!/usr/bin/env bash
# The CUDA checks, as one prepared run for a session lent a GPU machine (about 8 minutes of an
# H200; the device tool's README). That machine has python3 with torch, numpy, scipy,
# scikit-image and tifffile, but not zarr, dask or ome-zarr: fetch their wheels here first,
#
#   bash benchmarks/gpu.sh wheels        # here: .whl/ (ignored by git), about 10 MB
#
# then on the device, with carry [".whl"]:
#
#   bash benchmarks/gpu.sh run           # results under $OUT (or ./gpu-results)
#
# It prints: the CUDA tests of the suite that exist for it, cuda_check.py (identical arrays
# for 1, 7 and 64 planes per job; CUDA against CPU PSNR), and shared.py speed on CUDA for
# 64 and 256 planes of 512 x 512 and 64 of 2048 x 2048 (planes/s; where the time goes).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
wheels)
    grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >>.git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl \
        zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 \
        dask==2026.8.0 partd==1.4.2 locket==1.0.0 ome-zarr==0.18.0 imageio==2.38.1 \
        deprecated==1.3.1
    ;;
run)
    out="${OUT:-gpu-results}"
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
    python3 benchmarks/cuda_check.py --size 256 2>&1 | tee "$out/cuda_check.md"
    python3 benchmarks/shared.py speed --device cuda --threads 4 --sizes 512 --planes 64,256 \
        --methods shared-3000 2>&1 | tee "$out/speed-512.md"
    python3 benchmarks/shared.py speed --device cuda --threads 4 --sizes 2048 --planes 64 \
        --methods shared-3000 2>&1 | tee "$out/speed-2048.md"
    ;;
*)
    echo "usage: bash benchmarks/gpu.sh wheels|run" >&2
    exit 2
    ;;
esac
