"""CPU cost of fm2s against the machine's floor, side by side for several checkouts (issue 41).

Run by hand on a quiet machine, one thread, comparing a checkout of main with this one:

    git worktree add ../main-before main
    python benchmarks/cpu_floor.py train --trees ../main-before,. --repeats 3
    python benchmarks/cpu_floor.py parts --trees ../main-before,.
    python benchmarks/cpu_floor.py stack --trees ../main-before,. --planes 16,64
    python benchmarks/cpu_floor.py fmd --trees ../main-before,. --fields 1
    python benchmarks/cpu_floor.py floor          # this core's GEMM peak and the parts' floors

Every measurement runs in a fresh child process with ``PYTHONPATH`` set to one tree and
``OMP_NUM_THREADS=1``; trees alternate within each repeat, so both see the same machine load.
CPU seconds (``time.process_time``) are reported beside wall seconds, medians over repeats.
``--precision float32`` sets ``FM2S_AUTO_PRECISION=float32`` in the child, the training path of
a CPU without native bfloat16 (AVX2 only) on a CPU with it (trees from before 0.10.0 ignore the
variable, so for them the child passes ``precision=float32`` to the training settings instead:
the same arithmetic). ``avx2`` goes further: float32, and torch, oneDNN and MKL restricted to
their AVX2 kernels (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``, ``MKL_ENABLE_INSTRUCTIONS``),
and numba's compiled for an AVX2 CPU (``NUMBA_CPU_NAME=haswell`` with ``NUMBA_CPU_FEATURES``
empty: before 0.13.0 the latter was unset, and numba added the host's AVX-512 features), as on
an AVX2-only CPU. That holds the instruction set only: the core stays the host's, and a real
AVX2-only core may be much slower (a Zen 5 held to AVX2 ran issue 41's stacks 2-2.5x faster
than a Zen 3). Every run first prints the CPU it ran on; ``train`` measures float32, and
bfloat16 too where the CPU has it natively (``--precisions`` to choose).

``train``: one network trained on a synthetic 512 x 512 plane (:func:`fm2s.train.fit`, the
``fast`` recipe: 1,500 steps of 7 crops of 48 x 48), CPU-s per plane. ``parts``: the parts of
one plane's apply (network inference with the half-turn, Wiener, classical and guided NLM)
on that plane. ``stack``: :func:`fm2s.engine.denoise_stack_planes` on a synthetic time-lapse
of N planes (``--planes``) of each size (``--sizes``), CPU-s per plane and the mean PSNR
against the clean planes. ``fmd``: the FMD ``test_mix`` raw images denoised one by one with
the default settings, PSNR per configuration (``--fields``: fields of view per configuration).
``fmd-stacks``: each configuration's four fields of view as one 4-plane z-stack, at the raw,
avg4 and avg16 levels (15 stacks), through the stack engine with the default settings, mean
PSNR per stack.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fmd" / "test_mix"
CONFIGS = ("Confocal_BPAE_B", "Confocal_MICE", "TwoPhoton_BPAE_G", "TwoPhoton_MICE",
           "WideField_BPAE_B")

COMMON = r"""
import json, os, sys, time
import numpy as np
import torch
torch.set_num_threads(1)
import fm2s
from fm2s.synthetic import clean_plane, noisy_plane
args = json.loads(sys.argv[1])
FORCE = os.environ.get("FM2S_AUTO_PRECISION", "")
if os.environ.get("ATEN_CPU_CAPABILITY"):
    assert torch.backends.cpu.get_cpu_capability() == os.environ["ATEN_CPU_CAPABILITY"].upper()

def plane(size, seed=0):
    return noisy_plane(clean_plane((size, size), seed=seed, blobs=size // 8), seed=100 + seed)

def settings(**extra):
    s = fm2s.make_settings()
    if FORCE:
        extra.setdefault("precision", FORCE)
    return s.replace(**extra) if extra else s

def out(**values):
    print(json.dumps(values), flush=True)
"""

TRAIN = COMMON + r"""
from fm2s.noise import median_target, region_means
from fm2s.train import TrainingSet, fit
x = plane(args["size"]).astype(np.float32) / 255
s = settings(gain=0.01, read_var=1e-4, samples=args["samples"])
t = median_target(x, s.median_size)
m = region_means(t, s.region_size, s.mean_clamp)
data = TrainingSet([torch.from_numpy(x)], [torch.from_numpy(t)], [torch.from_numpy(m)],
                   torch.Generator().manual_seed(0), torch.Generator().manual_seed(0x5EED))
cpu, wall = time.process_time(), time.perf_counter()
net = fit([data], s, torch.device("cpu"))
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
digest = float(sum(p.detach().double().abs().sum() for p in net.parameters()))
out(cpu=cpu, wall=wall, weights=digest, module=fm2s.__file__)
"""

PARTS = COMMON + r"""
from fm2s.classical import vst_nlm, vst_wiener
from fm2s.noise import median_target, region_means
from fm2s.train import TrainingSet, extract_model, fit, predict
x = plane(args["size"]).astype(np.float32) / 255
s = settings(gain=0.01, read_var=1e-4, samples=50)
t = median_target(x, s.median_size)
m = region_means(t, s.region_size, s.mean_clamp)
data = TrainingSet([torch.from_numpy(x)], [torch.from_numpy(t)], [torch.from_numpy(m)],
                   torch.Generator().manual_seed(0), torch.Generator().manual_seed(0x5EED))
net = extract_model(fit([data], s, torch.device("cpu")), 0)
cpu_dev = torch.device("cpu")
clean = predict(net, x, cpu_dev, turn_average=True)
model = (0.01, 1e-4)
parts = {
    "inference (plane + half-turn)": lambda: predict(net, x, cpu_dev, turn_average=True),
    "NLM classical": lambda: vst_nlm(x, *model),
    "NLM guided": lambda: vst_nlm(x, *model, guide=clean),
    "Wiener": lambda: vst_wiener(x, clean, *model),
}
def onednn_inference():
    os.environ["FM2S_GEMM_CONVS"] = "0"
    try:
        return predict(net, x, cpu_dev, turn_average=True)
    finally:
        del os.environ["FM2S_GEMM_CONVS"]
parts["inference, oneDNN convolutions"] = onednn_inference
result = {}
for name, fn in parts.items():
    fn()
    times = []
    for _ in range(args["repeats"]):
        c, w = time.process_time(), time.perf_counter()
        fn()
        times.append((time.process_time() - c, time.perf_counter() - w))
    times.sort()
    result[name] = times[len(times) // 2]
result["_check"] = {name: float(np.asarray(fn(), dtype=np.float64).sum())
                    for name, fn in parts.items()}
out(**result)
"""

STACK = COMMON + r"""
import tempfile, tifffile
from pathlib import Path
from skimage.metrics import peak_signal_noise_ratio
from fm2s.engine import denoise_stack_planes
from fm2s.stacks import open_stack
size, count = args["size"], args["planes"]

def truth(i):  # one object moving slowly through the stack (a time-lapse)
    return clean_plane((size, size), seed=0, phase=0.02 * i, blobs=size // 8) * 255

planes = np.stack([noisy_plane(truth(i) / 255, seed=100 + i) for i in range(count)])
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "stack.ome.tif"
    tifffile.imwrite(path, planes[None, None], ome=True, metadata={"axes": "TCZYX"})
    s = settings(**args["set"])
    cpu, wall = time.process_time(), time.perf_counter()
    with open_stack(path) as stack:
        results = {k.z: r for k, r in denoise_stack_planes(stack, s, seed=0,
                                                           device=torch.device("cpu"))}
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
networks = len({(r.info or {}).get("network") for r in results.values()})
psnr = [peak_signal_noise_ratio(truth(i), results[i].image.astype(np.float64), data_range=255)
        for i in range(count)]
raw = [peak_signal_noise_ratio(truth(i), planes[i].astype(np.float64), data_range=255)
       for i in range(0, count, max(1, count // 16))]
out(cpu=cpu, wall=wall, planes=len(results), networks=networks, psnr=float(np.mean(psnr)),
    raw=float(np.mean(raw)), module=fm2s.__file__)
"""


FMD = COMMON + r"""
from skimage.metrics import peak_signal_noise_ratio
from fm2s.planeio import read_image
data = args["data"]
rows = []
for name in args["names"]:
    noisy = read_image(f"{data}/raw/{name}")
    gt = read_image(f"{data}/gt/{name}")
    cpu = time.process_time()
    image = fm2s.denoise(noisy, settings=settings(), device="cpu", threads=1)
    rows.append({"name": name, "psnr": peak_signal_noise_ratio(gt, image, data_range=255),
                 "cpu": time.process_time() - cpu})
out(rows=rows, module=fm2s.__file__)
"""


FMD_STACKS = COMMON + r"""
import tempfile, tifffile
from pathlib import Path
from skimage.metrics import peak_signal_noise_ratio
from fm2s.engine import denoise_stack_planes
from fm2s.planeio import read_image
from fm2s.stacks import open_stack
data = Path(args["data"])
rows = []
with tempfile.TemporaryDirectory() as tmp:
    for level in ("raw", "avg4", "avg16"):
        for config in args["configs"]:
            names = [f"{config}_{i}.png" for i in range(1, 5)]
            noisy = np.stack([read_image(data / level / n) for n in names])
            path = Path(tmp) / f"{config}-{level}.ome.tif"
            tifffile.imwrite(path, noisy[None, None], ome=True, metadata={"axes": "TCZYX"})
            cpu = time.process_time()
            with open_stack(path) as stack:
                images = {k.z: r.image for k, r in denoise_stack_planes(
                    stack, settings(), seed=0, device=torch.device("cpu"))}
            cpu = time.process_time() - cpu
            psnr = [peak_signal_noise_ratio(read_image(data / "gt" / n), images[z],
                                            data_range=255)
                    for z, n in enumerate(names)]
            rows.append({"level": level, "config": config, "psnr": float(np.mean(psnr)),
                         "cpu": cpu / 4})
out(rows=rows, module=fm2s.__file__)
"""


def child(tree: str, code: str, args: dict, precision: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    env.pop("FM2S_AUTO_PRECISION", None)
    if precision == "avx2":
        # The AVX2 kind of CPU on an AVX-512 one: torch's, oneDNN's and MKL's AVX2 kernels, and
        # float32 training (oneDNN then reports no native bfloat16, so `auto` picks float32)
        env.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2",
                   MKL_ENABLE_INSTRUCTIONS="AVX2", FM2S_AUTO_PRECISION="float32",
                   # numba's kernels (fm2s.cpu_kernels) too: an empty feature list means the
                   # CPU name's own (without it numba adds the host's, AVX-512 included)
                   NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="")
    elif precision:
        env["FM2S_AUTO_PRECISION"] = precision
    # -P and a neutral folder: the child imports fm2s from PYTHONPATH, never from the cwd
    proc = subprocess.run([sys.executable, "-P", "-W", "ignore", "-c", code, json.dumps(args)],
                          env=env, stdout=subprocess.PIPE, text=True, check=False,
                          cwd=tempfile.gettempdir())
    if proc.returncode:
        raise SystemExit(f"child failed in {tree}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median(values):
    return statistics.median(values)


def train(args) -> None:
    trees = args.trees.split(",")
    print("| precision | tree | CPU-s (median) | wall s (median) | CPU-s each | weights digests |")
    print("|---|---|---|---|---|---|")
    for precision in args.precisions.split(","):
        runs = {tree: [] for tree in trees}
        for _ in range(args.repeats):
            for tree in trees:
                runs[tree].append(child(tree, TRAIN, {"size": args.size,
                                                      "samples": args.samples}, precision))
        base = median([r["cpu"] for r in runs[trees[0]]])
        for tree in trees:
            cpu = median([r["cpu"] for r in runs[tree]])
            wall = median([r["wall"] for r in runs[tree]])
            each = ", ".join(f"{r['cpu']:.2f}" for r in runs[tree])
            digests = sorted({f"{r['weights']:.9f}" for r in runs[tree]})  # one: deterministic
            print(f"| {precision} | {tree} | {cpu:.2f} ({base / cpu:.2f}x) | {wall:.2f} | {each} "
                  f"| {', '.join(digests)} |", flush=True)
            assert runs[tree][0]["module"].startswith(str(Path(tree).resolve()))


def parts(args) -> None:
    """Each tree's parts side by side, for each kind of CPU in ``--precision`` (a comma list:
    ``native`` or empty for this CPU as it is, ``avx2`` for an AVX2-only one)."""
    trees = args.trees.split(",")
    for precision in args.precision.split(","):
        kind = "" if precision == "native" else precision
        results = {tree: child(tree, PARTS, {"size": args.size, "repeats": args.repeats}, kind)
                   for tree in trees}
        names = [n for n in results[trees[0]] if not n.startswith("_")]
        print(f"\nCPU kind: {kind or 'native'}, {args.size} x {args.size} plane, "
              f"median of {args.repeats}")
        print("| part | " + " | ".join(f"{t} CPU-s (wall)" for t in trees) + " |")
        print("|---|" + "---|" * len(trees))
        for name in names:
            cells = [f"{results[t][name][0]:.3f} ({results[t][name][1]:.3f})" for t in trees]
            print(f"| {name} | " + " | ".join(cells) + " |")
        for name in names:
            checks = [results[t]["_check"][name] for t in trees]
            print(f"check sum {name}: " + ", ".join(f"{c:.6f}" for c in checks), flush=True)


def stack(args) -> None:
    trees = args.trees.split(",")
    print("| planes | size | tree | CPU-s per plane | wall s per plane | networks | PSNR dB "
          "(noisy) |")
    print("|---|---|---|---|---|---|---|")
    for count in (int(p) for p in args.planes.split(",")):
        for size in (int(s) for s in args.sizes.split(",")):
            for tree in trees:
                r = child(tree, STACK, {"size": size, "planes": count,
                                        "set": dict(v.split("=", 1) for v in args.set)},
                          args.precision)
                print(f"| {count} | {size} | {tree} | {r['cpu'] / count:.3f} | "
                      f"{r['wall'] / count:.3f} | {r['networks']} | {r['psnr']:.2f} "
                      f"({r['raw']:.2f}) |", flush=True)


def fmd(args) -> None:
    trees = args.trees.split(",")
    names = [f"{c}_{i}.png" for c in CONFIGS for i in range(1, args.fields + 1)]
    runs = {tree: child(tree, FMD, {"data": str(DATA), "names": names}, args.precision)
            for tree in trees}
    results = {tree: run["rows"] for tree, run in runs.items()}
    for tree, run in runs.items():
        print(f"{tree}: fm2s from {run['module']}")
    print("| configuration | " + " | ".join(f"{t} PSNR" for t in trees) + " | delta dB |")
    print("|---|" + "---|" * (len(trees) + 1))
    for config in CONFIGS:
        means = [statistics.mean(r["psnr"] for r in results[t] if r["name"].startswith(config))
                 for t in trees]
        print(f"| {config} | " + " | ".join(f"{m:.3f}" for m in means) +
              f" | {means[-1] - means[0]:+.3f} |")
    for tree in trees:
        print(f"{tree}: mean CPU-s per image "
              f"{statistics.mean(r['cpu'] for r in results[tree]):.2f}")
    for t in trees:
        print(t, json.dumps([round(r["psnr"], 3) for r in results[t]]))


def fmd_stacks(args) -> None:
    trees = args.trees.split(",")
    runs = {tree: child(tree, FMD_STACKS, {"data": str(DATA), "configs": CONFIGS},
                        args.precision) for tree in trees}
    print("| level | configuration | " + " | ".join(f"{t} PSNR" for t in trees) +
          " | delta dB |")
    print("|---|---|" + "---|" * (len(trees) + 1))
    for i, row in enumerate(runs[trees[0]]["rows"]):
        values = [runs[t]["rows"][i]["psnr"] for t in trees]
        print(f"| {row['level']} | {row['config']} | " + " | ".join(f"{v:.3f}" for v in values)
              + f" | {values[-1] - values[0]:+.3f} |")
    for tree in trees:
        print(f"{tree}: mean CPU-s per plane "
              f"{statistics.mean(r['cpu'] for r in runs[tree]['rows']):.2f}")


def floor(args) -> None:
    """This core's rates, and each part's floor from them (issue 41).

    Matrix products count at the float32 GEMM peak (1024^3). Passes over arrays count at the
    rate of one elementwise multiply over an array that stays in cache (0.5 MB, the size of
    the Wiener filter's and the NLM bands' arrays): what torch's one-operation passes cost
    at best (``as written``). A fused kernel's floor counts each operation at one per vector
    lane and cycle, half the GEMM peak's rate (where a multiply-add counts 2). Wiener: 7
    operations per coefficient (p^2, + s^2, /, x c, shrink^2, sum, x weight); as passes, 8.
    NLM: the operations per pixel and offset of one pass as the code makes them (classical:
    the squared difference, box sums of (s - 1)^2 = 16 pixels by doubling 2 + 2 adds, the
    distance's scale and offset, 2 thresholds and a clamp for the cut-off, 3 for
    Schraudolph's exponential; guided: difference and square, box sums of 25 by doubling
    3 + 3 adds, 2 scalings, exp; both: 2 + 2 to add the pair both ways) over the pixels of
    the pass's plane (classical: reflected by 9 pixels), for the 84 offsets of half the
    13 x 13 search window.
    """
    import time

    import torch
    torch.set_num_threads(1)

    def rate(fn, work, repeats=5, inner=10):
        fn()
        times = []
        for _ in range(repeats):
            start = time.process_time()
            for _ in range(inner):
                fn()
            times.append((time.process_time() - start) / inner)
        return work / median(times)

    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(1024, 1024, dtype=dtype)
        b = torch.randn(1024, 1024, dtype=dtype)
        peaks[str(dtype)] = rate(lambda: a @ b, 2 * 1024**3) / 1e9  # noqa: B023
        print(f"GEMM 1024^3 {dtype}: {peaks[str(dtype)]:.1f} GFLOP/s on one thread")
    gemm = peaks["torch.float32"] * 1e9
    x, y = torch.randn(4, 8, 4096), torch.randn(4, 8, 4096)
    passes = rate(lambda: x.mul_(y), x.numel())
    big = torch.empty(2**26)
    bandwidth = rate(lambda: big.fill_(1.0), big.numel() * 4, repeats=3, inner=3)
    print(f"elementwise pass in cache (0.5 MB): {passes / 1e9:.1f} G elements/s; "
          f"memory (writing 256 MB): {bandwidth / 1e9:.1f} GB/s")
    pixels, size = 7 * 48 * 48, 512 * 512
    macs = 1 * 24 * 25 + 24 * 12 * 9 + 12 * 1 * 25  # per pixel, one forward pass
    flops = 2 * macs * pixels * (3 * 1500) - 2 * 25 * 24 * pixels * 1500  # no input gradient
    for dtype, peak in peaks.items():
        print(f"training floor ({dtype} GEMM peak): {flops / 1e9:.0f} GFLOP -> "
              f"{flops / peak / 1e9:.2f} s")
    print(f"\nfloors of one {args.size} x {args.size} plane's parts, one thread:")
    inference = 2 * macs * size * 4
    print(f"inference (4 passes): {inference / 1e9:.1f} GFLOP -> {inference / gemm:.3f} s")
    # A fused kernel's elementwise floor: one vector operation per lane and cycle, about half
    # the GEMM peak's floating-point operations (a multiply-add counts two)
    vector = gemm / 2
    n, s = args.size, 8
    positions = (n + s - 1) ** 2
    coefficients = s * s * positions
    wiener_macs = (2 * (n + 2 * s - 2) * (n + s - 1) * s * s  # along rows, plane and pilot
                   + 2 * coefficients * s  # along columns, plane and pilot
                   + coefficients * s + n * n * s * s)  # put back along columns, rows
    wiener_gemm = 2 * wiener_macs / gemm
    print(f"Wiener: {2 * wiener_macs / 1e9:.2f} GFLOP of products -> {wiener_gemm:.3f} s; "
          f"{coefficients / 1e6:.1f} M coefficients x 7 operations -> "
          f"{7 * coefficients / vector:.3f} s fused, {8 * coefficients / passes:.3f} s as "
          f"passes; floor {wiener_gemm + 7 * coefficients / vector:.3f} s fused, "
          f"{wiener_gemm + 8 * coefficients / passes:.3f} s as written")
    band = (n + 2 * (2 + 6 + 1)) ** 2  # the classical pass's reflected plane
    offsets = (13 * 13 - 1) // 2
    classical_ops, guided_ops = 1 + 4 + 1 + 3 + 3 + 4, 2 + 6 + 2 + 1 + 4
    for name, ops, pixels_ in (("classical", classical_ops, band), ("guided", guided_ops, n * n)):
        work = ops * offsets * pixels_
        print(f"NLM {name}: {offsets} offsets x {ops} operations x {pixels_ / 1e3:.0f} k pixels "
              f"= {work / 1e9:.2f} G -> floor {work / vector:.3f} s fused, "
              f"{work / passes:.3f} s as written (one operation a pass)")


def describe_cpu() -> str:
    """One line on this machine's CPU: the figures of one kind of core do not carry to another
    (``--precision avx2`` holds the libraries to AVX2 code, but the core stays the same: on
    the Zen 5 of 0.13.0's figures it ran 2-2.5x faster than a real AVX2-only Zen 3)."""
    import torch

    fields = {}
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
                if not line.strip():
                    break
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    vectors = ("AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2")
    bf16 = "with" if "avx512_bf16" in flags or "amx_bf16" in flags else "without"
    return (f"CPU: {fields.get('model name', 'unknown')} (family {fields.get('cpu family', '?')},"
            f" model {fields.get('model', '?')}), {vectors} {bf16} native bfloat16; torch "
            f"{torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}")


def native_bfloat16() -> bool:
    import torch
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["train", "parts", "stack", "fmd", "fmd-stacks", "floor"])
    parser.add_argument("--trees", default=".")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--sizes", default="512", help="stack: plane sizes (comma-separated)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="stack: a settings field (string values: neighbours=off)")
    parser.add_argument("--samples", type=int, default=1500)
    parser.add_argument("--precisions", default="",
                        help="train: comma list (default float32, and bfloat16 where the CPU "
                             "has it natively: emulated, it takes minutes a run)")
    parser.add_argument("--precision", default="",
                        help="stack, fmd: FM2S_AUTO_PRECISION (or avx2); parts: a comma list of "
                             "CPU kinds, native and/or avx2")
    parser.add_argument("--planes", default="16,64")
    parser.add_argument("--fields", type=int, default=1)
    args = parser.parse_args()
    if not args.precisions:
        args.precisions = "float32,bfloat16" if native_bfloat16() else "float32"
    print(describe_cpu(), flush=True)
    {"train": train, "parts": parts, "stack": stack, "fmd": fmd, "fmd-stacks": fmd_stacks,
     "floor": floor}[args.what](args)


if __name__ == "__main__":
    main()
