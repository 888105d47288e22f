"""Stack mode (issue 43, ``Settings.neighbours``): plane mode against stack mode on stacks with
ground truth, and on real stacks without.

Run by hand, one thread (rows are printed and appended as JSON lines to ``--out``):

    PYTHONPATH=. nice -n 5 python benchmarks/stack_mode.py synthetic --out results/stack_mode.jsonl
    PYTHONPATH=. nice -n 5 python benchmarks/stack_mode.py bm3d --out results/stack_mode.jsonl
    PYTHONPATH=. nice -n 5 python benchmarks/stack_mode.py real --out results/stack_mode_real.jsonl
    python benchmarks/stack_mode.py summary results/stack_mode.jsonl

``synthetic``: for each FMD ``test_mix`` configuration, a 256 x 256 crop of the ground truth of
field ``_1`` (the mean of 50 captures) is the clean plane ``x``; each plane of a stack is an
independent capture ``poisson(x / a) * a + N(0, b)`` rounded to 8 bits, with the
Poisson-Gaussian model ``(a, b)`` fitted by :func:`fm2s.estimate.estimate_noise` on the same
crop of that configuration's raw capture (the row records the fit on the raw crop and on a
synthetic capture: they agree). FMD has one capture per field and level, so independent
captures of one field can only be synthesised; the truth's own noise (1/50 of a capture's
variance) is left in. Scenarios (``--scenarios``), 5 planes each, as a time-lapse:

``static``       the same field in every plane;
``shift1``       the field moves 1 pixel per frame (x), ``shift4`` 4 pixels per frame;
``deform``       a smooth sinusoidal warp whose amplitude grows by 1.5 pixels per frame;
``fade``         brightness falls by 15 % per frame (bleaching);
``appear``       a 96 x 96 patch of another field is pasted into frames 1 and 3 only;
``zcoarse``      each plane another part of the field (64 pixels apart, y): a z-step so
                 coarse that no neighbour shares a structure where the plane has it;
``real4``        the configuration's four real raw captures ``_1`` to ``_4`` (FMD's test_mix
                 holds four independent captures of one field, with one ground truth): a
                 static 4-plane stack of real noise.

Each stack is trained once (the default ``auto`` settings, one shared network) and applied in
plane mode (``neighbours="off"``) and stack mode (``"auto"``), through
:func:`fm2s.engine.train_stack` and :func:`fm2s.engine.apply_model`; per plane: PSNR (data
range 255) and SSIM against its truth, the stack-mode weights (``stack_weights``: mean over
the plane of each candidate's weight), and CPU seconds of applying (process time), with
training's once. ``average`` is the plain average of the captures (static only), ``bm3d``
BM3D with the generalized Anscombe transform and the blind fit (``--bm3d``).

``real``: the ND2 time-lapse, the MitoCheck movie and the Golgi z-stack (``--names``), the
first ``--planes`` planes of one channel cropped to ``--crop``: per frame, the std of
input minus output and of the difference between stack and plane mode, and the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import fm2s
from fm2s.devices import resolve_device, set_threads
from fm2s.engine import apply_model, train_stack
from fm2s.estimate import estimate_noise
from fm2s.planeio import read_image
from fm2s.stacks import open_stack

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FMD = DATA / "fmd" / "test_mix"
CONFIGS = ("Confocal_BPAE_B", "Confocal_MICE", "TwoPhoton_BPAE_G", "TwoPhoton_MICE",
           "WideField_BPAE_B")
SCENARIOS = ("real4", "static", "shift1", "shift4", "deform", "fade", "appear", "zcoarse")
REAL = {
    "nd2-timelapse": "vendor_formats/example-timelapse.nd2",
    "mitocheck": "neubias_training_resources/image_data/mitocheck-movie",
    "golgi-z": "neubias_training_resources/image_data/xyz_calibrated_16bit__golgi_bfa.tif",
    "celldivision-czi": "czitools_samples/CellDivision_T3_Z5_CH2_X240_Y170.czi",
}
PLANES = 5
CROP = 256


def capture(clean: np.ndarray, gain: float, read: float, rng) -> np.ndarray:
    """One synthetic 8-bit capture of a clean plane (DN), Poisson-Gaussian (gain, read) in DN."""
    photons = rng.poisson(np.maximum(clean, 0) / gain) * gain
    noisy = photons + rng.normal(0.0, np.sqrt(max(read, 0.0)), clean.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def truths(config: str, scenario: str, crop: int = CROP) -> np.ndarray:
    """The clean planes (float DN) of a scenario."""
    gt = read_image(FMD / "gt" / f"{config}_1.png").astype(np.float64)
    y0 = x0 = (gt.shape[0] - crop) // 2
    base = gt[y0:y0 + crop, x0:x0 + crop]
    planes = []
    for t in range(PLANES):
        if scenario == "static":
            planes.append(base)
        elif scenario.startswith("shift"):
            step = int(scenario[5:])
            d = step * (t - PLANES // 2)
            planes.append(gt[y0:y0 + crop, x0 + d:x0 + d + crop])
        elif scenario == "deform":
            amp = 1.5 * t
            yy, xx = np.mgrid[0:crop, 0:crop].astype(np.float64)
            planes.append(ndimage.map_coordinates(
                gt, [yy + y0 + amp * np.sin(2 * np.pi * xx / 64),
                     xx + x0 + amp * np.cos(2 * np.pi * yy / 80)], order=3, mode="reflect"))
        elif scenario == "fade":
            planes.append(base * (1 - 0.15 * t))
        elif scenario == "appear":
            plane = base.copy()
            if t in (1, 3):
                other = read_image(FMD / "gt" / f"{config}_2.png").astype(np.float64)
                plane[80:176, 80:176] = other[200:296, 200:296]
            planes.append(plane)
        elif scenario == "zcoarse":
            d = 64 * (t - PLANES // 2)  # other parts of the field: no structure in common
            planes.append(gt[y0 + d:y0 + d + crop, x0:x0 + crop])
        else:
            raise ValueError(scenario)
    return np.stack(planes)


def noisy_stack(config: str, scenario: str, seed: int):
    """Noisy 8-bit planes, their 8-bit truths, and the noise fits (raw crop, one capture)."""
    raw = read_image(FMD / "raw" / f"{config}_1.png")
    y0 = (raw.shape[0] - CROP) // 2
    if scenario == "real4":
        gt = read_image(FMD / "gt" / f"{config}_1.png")[y0:y0 + CROP, y0:y0 + CROP]
        noisy = np.stack([read_image(FMD / "raw" / f"{config}_{i}.png")[y0:y0 + CROP,
                                                                       y0:y0 + CROP]
                          for i in range(1, 5)])
        fit = estimate_noise(noisy[0])
        return noisy, np.stack([gt] * 4), {"raw": [round(fit.gain_dn, 3),
                                                   round(fit.read_var_dn, 2)]}
    fit = estimate_noise(raw[y0:y0 + CROP, y0:y0 + CROP])
    gain, read = max(fit.gain_dn, 1e-3), fit.read_var_dn
    clean = truths(config, scenario)
    rng = np.random.default_rng(seed)
    noisy = np.stack([capture(c, gain, read, rng) for c in clean])
    check = estimate_noise(noisy[PLANES // 2])
    fits = {"raw": [round(fit.gain_dn, 3), round(fit.read_var_dn, 2)],
            "synthetic": [round(check.gain_dn, 3), round(check.read_var_dn, 2)]}
    return noisy, np.clip(np.rint(clean), 0, 255).astype(np.uint8), fits


def run_modes(path: Path, settings, device):
    """Train once, apply in plane mode and stack mode: {mode: (images, infos, cpu_s)}, train s."""
    with open_stack(path) as stack:
        cpu = time.process_time()
        model = train_stack(stack, settings, seed=0, device=device)
        train_s = time.process_time() - cpu
        out = {}
        for mode in ("off", "auto"):
            model.settings = settings.replace(neighbours=mode)
            cpu = time.process_time()
            results = list(apply_model(stack, model, device=device))
            out[mode] = ([r.image for r in results], [r.info or {} for r in results],
                         time.process_time() - cpu)
    return out, train_s


def bm3d_plane(noisy: np.ndarray) -> np.ndarray:
    import bm3d

    from fm2s.classical import generalized_anscombe, inverse_generalized_anscombe

    noise = estimate_noise(noisy)
    a, b = max(noise.gain_dn, 1e-3), noise.read_var_dn
    d = generalized_anscombe(noisy.astype(np.float64), a, b)
    return np.clip(np.rint(inverse_generalized_anscombe(bm3d.bm3d(d, sigma_psd=1.0), a, b)),
                   0, 255).astype(np.uint8)


def synthetic(args) -> None:
    import fm2s.neighbours

    fm2s.neighbours.STACK_TILE = args.stack_tile
    if args.guard:
        fm2s.neighbours.GUARD = tuple(float(v) for v in args.guard.split(","))
    set_threads(1)
    device = resolve_device("cpu")
    settings = fm2s.make_settings()
    with open(args.out, "a") as handle, tempfile.TemporaryDirectory() as tmp:
        for config in args.configs.split(","):
            for scenario in args.scenarios.split(","):
                noisy, truth, fits = noisy_stack(config, scenario, args.seed)
                path = Path(tmp) / f"{config}-{scenario}.ome.tif"
                tifffile.imwrite(path, noisy[:, None, None], ome=True,
                                 metadata={"axes": "TCZYX"})
                out, train_s = run_modes(path, settings, device)
                def score(a, b):
                    return (round(peak_signal_noise_ratio(b, a, data_range=255), 3),
                            round(structural_similarity(b, a, data_range=255), 4))
                row = {"config": config, "scenario": scenario, "seed": args.seed,
                       "fits_dn": fits, "train_cpu_s": round(train_s, 2),
                       "input": [score(n, t) for n, t in zip(noisy, truth, strict=False)]}
                for mode, name in (("off", "plane"), ("auto", "stack")):
                    images, infos, cpu_s = out[mode]
                    row[name] = [score(i, t) for i, t in zip(images, truth, strict=False)]
                    row[f"{name}_apply_cpu_s"] = round(cpu_s / len(noisy), 3)
                    if scenario == "appear":  # the pasted patch, in the frames that have it
                        row[f"{name}_patch"] = [score(i[80:176, 80:176], t[80:176, 80:176])
                                                for i, t in zip(images, truth, strict=False)]
                row["weights"] = [i.get("stack_weights") for i in out["auto"][1]]
                if scenario in ("static", "real4"):
                    average = np.clip(np.rint(noisy.astype(np.float64).mean(0)), 0, 255)
                    row["average"] = [score(average.astype(np.uint8), t) for t in truth]
                    if args.bm3d:
                        cpu = time.process_time()
                        row["bm3d"] = [score(bm3d_plane(n), t)
                                       for n, t in zip(noisy, truth, strict=True)]
                        row["bm3d_cpu_s"] = round((time.process_time() - cpu) / len(noisy), 3)
                handle.write(json.dumps(row) + "\n")
                handle.flush()
                gap = [s[0] - p[0] for s, p in zip(row["stack"], row["plane"], strict=False)]
                print(f"{config} {scenario}: plane {np.mean([p[0] for p in row['plane']]):.2f} "
                      f"stack {np.mean([p[0] for p in row['stack']]):.2f} dB, worst plane "
                      f"{min(gap):+.3f}, best {max(gap):+.3f}", flush=True)


def peer(args) -> None:
    """BM3D with the generalized Anscombe transform and the blind fit, each plane alone, on the
    static stacks (the same captures as ``synthetic``, by their seed)."""
    if args.path:  # a folder holding the bm3d package (appended: the venv's numpy first)
        sys.path.append(args.path)
    if not hasattr(np, "trapz"):  # bm4d reads coloured PSDs with it; gone in NumPy 2.4
        np.trapz = np.trapezoid  # noqa: NPY201
    with open(args.out, "a") as handle:
        for config in args.configs.split(","):
            for scenario in ("real4", "static"):
                noisy, truth, _ = noisy_stack(config, scenario, args.seed)
                cpu = time.process_time()
                scores = [(round(peak_signal_noise_ratio(t, bm3d_plane(n), data_range=255), 3),
                           round(structural_similarity(t, bm3d_plane(n), data_range=255), 4))
                          for n, t in zip(noisy, truth, strict=False)]
                row = {"config": config, "scenario": scenario, "seed": args.seed,
                       "bm3d": scores,
                       "bm3d_cpu_s": round((time.process_time() - cpu) / 2 / len(noisy), 3)}
                handle.write(json.dumps(row) + "\n")
                handle.flush()
                print(config, scenario, np.mean([v[0] for v in scores]), flush=True)


def real(args) -> None:
    from fm2s.engine import plan_groups  # noqa: F401  (the engine's own grouping)

    set_threads(1)
    device = resolve_device("cpu")
    settings = fm2s.make_settings()
    with open(args.out, "a") as handle, tempfile.TemporaryDirectory() as tmp:
        for name in args.names.split(","):
            with open_stack(DATA / REAL[name]) as stack:
                keys = stack.plane_keys()
                channel = keys[0][1]
                keys = [k for k in keys if k[1] == channel][:args.planes]
                planes = np.stack([stack.read_plane(k) for k in keys])
                axis = "z" if stack.metadata.shape[2] > 1 else "t"
            h, w = planes.shape[1:]
            c = args.crop
            y0, x0 = max(0, (h - c) // 2), max(0, (w - c) // 2)
            planes = np.ascontiguousarray(planes[:, y0:y0 + c, x0:x0 + c])
            path = Path(tmp) / f"{name}.ome.tif"
            shaped = planes[:, None, None] if axis == "t" else planes[None, None]
            tifffile.imwrite(path, shaped, ome=True, metadata={"axes": "TCZYX"})
            out, train_s = run_modes(path, settings, device)
            plane_imgs, stack_imgs = out["off"][0], out["auto"][0]
            row = {"stack": name, "axis": axis, "shape": list(planes.shape),
                   "dtype": str(planes.dtype), "train_cpu_s": round(train_s, 2),
                   "plane_apply_cpu_s": round(out["off"][2] / len(planes), 3),
                   "stack_apply_cpu_s": round(out["auto"][2] / len(planes), 3),
                   "residual_std_plane": [round(float((p.astype(float) - o).std()), 3)
                                          for p, o in zip(planes, plane_imgs, strict=False)],
                   "residual_std_stack": [round(float((p.astype(float) - o).std()), 3)
                                          for p, o in zip(planes, stack_imgs, strict=False)],
                   "stack_minus_plane_std": [round(float((s.astype(float) - o).std()), 3)
                                             for s, o in zip(stack_imgs, plane_imgs, strict=False)],
                   "weights": [i.get("stack_weights") for i in out["auto"][1]]}
            if args.save:
                np.savez_compressed(Path(args.save) / f"{name}.npz", input=planes,
                                    plane=np.stack(plane_imgs), stack=np.stack(stack_imgs))
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            print(json.dumps({k: row[k] for k in ("stack", "shape", "residual_std_plane",
                                                  "residual_std_stack")}), flush=True)


def summary(args) -> None:
    rows, peers = [], {}
    for line in (line for f in args.files for line in open(f) if line.strip()):
        row = json.loads(line)
        if "plane" in row:
            rows.append(row)
        elif "bm3d" in row:
            peers[row["config"], row["scenario"], row["seed"]] = row
    for r in rows:
        r.update({k: v for k, v in peers.get((r["config"], r["scenario"], r["seed"]),
                                             {}).items() if k.startswith("bm3d")})
    print("| config | scenario | input dB | plane mode dB / SSIM | stack mode dB / SSIM | "
          "worst plane (stack - plane) | average dB | BM3D+VST dB | apply CPU-s/plane "
          "plane / stack | mean weights (P, NLM(F), NLM(F|P), M, NLM(M), Wiener(F)) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def m(k, r=r):
            return np.mean([v[0] for v in r[k]]) if k in r else float("nan")

        def s(k, r=r):
            return np.mean([v[1] for v in r[k]]) if k in r else float("nan")

        gap = min(a[0] - b[0] for a, b in zip(r["stack"], r["plane"], strict=False))
        weights = [w for w in r["weights"] if w]
        mean_w = ", ".join(f"{np.mean([w.get(k, 0.0) for w in weights]):.2f}" for k in (
            "plane", "nlm_mean", "nlm_mean_guided", "raw_neighbours", "nlm_neighbours",
            "wiener_mean"))
        print(f"| {r['config']} | {r['scenario']} | {m('input'):.2f} | {m('plane'):.2f} / "
              f"{s('plane'):.3f} | {m('stack'):.2f} / {s('stack'):.3f} | {gap:+.3f} | "
              f"{m('average'):.2f} | {m('bm3d'):.2f} | {r['plane_apply_cpu_s']} / "
              f"{r['stack_apply_cpu_s']} | {mean_w} |")
    patches = [r for r in rows if "plane_patch" in r]
    if patches:
        print("\n| config | appearing patch, frames 1 and 3 (plane / stack dB) | frames 0, 2, 4 |")
        print("|---|---|---|")
        for r in patches:
            def cell(frames, r=r):
                return " ".join(f"{r['plane_patch'][i][0]:.2f}/{r['stack_patch'][i][0]:.2f}"
                                for i in frames)
            print(f"| {r['config']} | {cell((1, 3))} | {cell((0, 2, 4))} |")
    worst = min(a[0] - b[0] for r in rows for a, b in zip(r["stack"], r["plane"], strict=True))
    print(f"\nworst plane (stack - plane, dB) over all rows: {worst:+.3f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    syn = sub.add_parser("synthetic")
    syn.add_argument("--out", required=True)
    syn.add_argument("--configs", default=",".join(CONFIGS))
    syn.add_argument("--scenarios", default=",".join(SCENARIOS))
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--bm3d", action="store_true")
    syn.add_argument("--guard", default=None, help="lo,hi (fm2s.neighbours.GUARD)")
    syn.add_argument("--stack-tile", type=int, default=None,
                     help="tile of the stack blend (fm2s.neighbours.STACK_TILE)")
    bm = sub.add_parser("bm3d")
    bm.add_argument("--out", required=True)
    bm.add_argument("--configs", default=",".join(CONFIGS))
    bm.add_argument("--seed", type=int, default=0)
    bm.add_argument("--path", default=None, help="folder holding the bm3d package")
    rl = sub.add_parser("real")
    rl.add_argument("--out", required=True)
    rl.add_argument("--names", default=",".join(REAL))
    rl.add_argument("--planes", type=int, default=8)
    rl.add_argument("--crop", type=int, default=256)
    rl.add_argument("--save", default=None)
    show = sub.add_parser("summary")
    show.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    {"synthetic": synthetic, "bm3d": peer, "real": real, "summary": summary}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
