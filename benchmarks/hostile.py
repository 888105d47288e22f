"""Bad inputs and faults against the command line, case by case (run by hand; issue 21).

Each case runs ``python -m fm2s ...`` in a scratch folder and reports the exit code, the first
line of stderr (and whether a traceback or a tifffile log line was printed) and the files left
beside the output. Some cases need root (a tmpfs for the full disk, another user for a
read-only folder) and are skipped without it.

Usage::

    python benchmarks/hostile.py              # prints a Markdown table
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fm2s.synthetic import clean_plane, noisy_plane  # noqa: E402

TINY = ["--set", "steps=4", "--set", "crop_size=16", "--device", "cpu", "--threads", "1"]


def stack(planes: int, size: int = 64) -> np.ndarray:
    return np.stack([noisy_plane(clean_plane((size, size), seed=z), seed=z, dtype=np.uint16)
                     for z in range(planes)])


def fm2s(*args: str, cwd: Path, user: int | None = None, background: bool = False):
    command = [sys.executable, "-m", "fm2s", "-q", *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if background:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          check=False)


def left(folder: Path, inputs: set[str]) -> str:
    names = sorted(p.name for p in folder.iterdir() if p.name not in inputs)
    return ", ".join(names) or "nothing"


def row(case: str, command: str, code: int, err: str, on_disk: str) -> list[str]:
    lines = [line for line in err.splitlines() if line.strip()]
    message = lines[-1] if lines else ""
    if "Traceback" in err:
        message += " (with a traceback)"
    if "ERROR tifffile" in err or "WARNING tifffile" in err:
        message += " (with tifffile log lines)"
    return [case, f"`{command}`", str(code), message.replace("|", "\\|")[:160], on_disk]


def cases(tmp: Path) -> list[list[str]]:
    rows = []
    planes = stack(6)
    tifffile.imwrite(tmp / "plain.tif", planes, photometric="minisblack")
    tifffile.imwrite(tmp / "ij.tif", planes[:, None], imagej=True)
    for name in ("plain.tif", "ij.tif"):
        data = (tmp / name).read_bytes()
        (tmp / f"cut-{name}").write_bytes(data[: len(data) // 2])
    tifffile.imwrite(tmp / "hyper.tif", np.stack([planes[:3], planes[3:]])[:, :, None],
                     imagej=True, resolution=(5.0, 5.0),
                     metadata={"axes": "TZCYX", "unit": "um", "spacing": 0.5, "finterval": 30})
    tifffile.imwrite(tmp / "omeplain.tif", planes[:2], ome=True, photometric="minisblack",
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2})
    tifffile.imwrite(tmp / "line.tif", np.arange(10, dtype=np.uint16))
    nan = planes.astype(np.float32)
    nan[4, 3, 3] = np.nan
    tifffile.imwrite(tmp / "nan.tif", nan, photometric="minisblack")
    tifffile.imwrite(tmp / "zero.tif", np.zeros((64, 64), np.uint16))
    (tmp / "afile").write_text("")
    inputs = {p.name for p in tmp.iterdir()}

    def case(name, *args, check=None):
        done = fm2s(*args, cwd=tmp)
        extra = check() if check else ""
        rows.append(row(name, "fm2s " + " ".join(a for a in args if a not in TINY[1::2]
                                                 and a not in TINY[::2]),
                        done.returncode, done.stderr, left(tmp, inputs) + extra))
        for p in tmp.iterdir():
            if p.name not in inputs:
                shutil.rmtree(p) if p.is_dir() else p.unlink()

    case("truncated plain TIFF to .tif", "denoise", "cut-plain.tif", "o.tif", *TINY)
    case("truncated ImageJ TIFF to .tif", "denoise", "cut-ij.tif", "o.tif", *TINY)

    def metadata_of(source, output):
        def check():
            from fm2s.stacks import open_stack

            described = []
            for path in (source, output):
                with open_stack(tmp / path) as opened:
                    m = opened.metadata
                described.append(f"{m.format} {m.axes_found}, pixel {m.pixel_sizes['x']} "
                                 f"{m.units['x']}, dt {m.time_step}")
            return f" ({described[1]}; input: {described[0]})"
        return check

    case("ImageJ hyperstack to .tif", "denoise", "hyper.tif", "o.tif", *TINY,
         check=metadata_of("hyper.tif", "o.tif"))
    case("OME-TIFF named .tif to .tif", "denoise", "omeplain.tif", "o.tif", *TINY,
         check=metadata_of("omeplain.tif", "o.tif"))

    def mode_of(path):
        return lambda: f" (mode {oct((tmp / path).stat().st_mode & 0o777)}, umask 022)"

    os.umask(0o022)
    case("a .tif output's permissions", "denoise", "zero.tif", "o.tif", *TINY,
         check=mode_of("o.tif"))
    case("a .png output's permissions (fm2s demo)", "demo", "demo", "--size", "64", *TINY,
         check=mode_of("demo/denoised.png"))
    case("parent of the output is a file", "denoise", "plain.tif", "afile/o.tif", *TINY)
    case("--save-settings cannot be written", "denoise", "plain.tif", "o.tif",
         "--save-settings", "afile/s.json", *TINY)
    if os.geteuid() == 0 and shutil.which("setpriv"):
        locked = tmp / "locked"
        locked.mkdir(mode=0o555)
        os.chmod(tmp, 0o755)
        done = fm2s("denoise", str(tmp / "plain.tif"), str(locked / "o.tif"), *TINY,
                    cwd=Path("/"), user=65534)
        rows.append(row("read-only output folder (as user nobody)",
                        "fm2s denoise plain.tif locked/o.tif", done.returncode, done.stderr,
                        left(locked, set())))
        locked.rmdir()
    case("a 1-D TIFF", "denoise", "line.tif", "o.tif", *TINY)
    case("a NaN in plane 4 (auto)", "denoise", "nan.tif", "o.tif", *TINY)
    case("an all-zero plane", "denoise", "zero.tif", "o.tif", *TINY)
    done = fm2s("denoise", "zero.tif", "z.ome.zarr", "--levels", "50", *TINY, cwd=tmp)
    levels = sorted(p.name for p in (tmp / "z.ome.zarr").iterdir() if p.name.isdigit())
    rows.append(row("--levels 50 on a 64 x 64 plane", "fm2s -v denoise zero.tif z.ome.zarr "
                    "--levels 50", done.returncode, "", f"{len(levels)} levels"))
    piped = subprocess.run(f"{sys.executable} -m fm2s info z.ome.zarr | head -1", shell=True,
                           cwd=tmp, capture_output=True, text=True, check=False,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    rows.append(row("`fm2s info` into a closed pipe", "fm2s info z.ome.zarr | head -1",
                    piped.returncode, piped.stderr or "(stderr empty)", "-"))
    shutil.rmtree(tmp / "z.ome.zarr")

    big = tmp / "big.tif"
    tifffile.imwrite(big, stack(2, 96), photometric="minisblack")
    inputs.add(big.name)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        job = fm2s("denoise", "big.tif", "o.ome.zarr", "--set", "steps=100000", "--device",
                   "cpu", "--threads", "1", cwd=tmp, background=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(
                p.name.startswith(".o.ome.zarr.tmp") for p in tmp.iterdir()):
            time.sleep(0.1)
        time.sleep(1)
        job.send_signal(sig)
        _, err = job.communicate(timeout=120)
        on_disk = left(tmp, inputs)
        if sig == signal.SIGKILL:
            rerun = fm2s("denoise", "big.tif", "o.ome.zarr", *TINY, cwd=tmp)
            on_disk += f"; after a rerun (exit {rerun.returncode}): {left(tmp, inputs)}"
        rows.append(row(f"{sig.name} while denoising to .ome.zarr", "fm2s denoise big.tif "
                        "o.ome.zarr", job.returncode, err or "(killed)", on_disk))
        for p in tmp.iterdir():
            if p.name not in inputs:
                shutil.rmtree(p) if p.is_dir() else p.unlink()

    both = [fm2s("denoise", "big.tif", "same.tif", "--set", "steps=200", *TINY[4:], cwd=tmp,
                 background=True) for _ in range(2)]
    results = [(job.wait(), job.stderr.read()) for job in both]
    codes = sorted(code for code, _ in results)
    err = next((e for code, e in results if code), "")
    rows.append(row("two runs writing the same output at once", "fm2s denoise big.tif same.tif "
                    "(twice, in parallel)", codes[-1], err, left(tmp, inputs) +
                    f" (exit codes {codes})"))
    for p in tmp.iterdir():
        if p.name not in inputs:
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    tifffile.imwrite(tmp / "huge.tif", stack(4, 128), photometric="minisblack")  # 128 kB
    if os.geteuid() == 0:
        full = tmp / "full"
        full.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)],
                                 capture_output=True, check=False).returncode == 0
        if mounted:
            try:
                for out in ("o.tif", "o.ome.zarr"):
                    done = fm2s("denoise", "huge.tif", str(full / out), *TINY, cwd=tmp)
                    rows.append(row(f"disk full while writing {out} (64 kB tmpfs)",
                                    f"fm2s denoise huge.tif full/{out}", done.returncode,
                                    done.stderr, left(full, set())))
            finally:
                subprocess.run(["umount", str(full)], check=False)
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        rows = cases(Path(folder))
    print("| case | command | exit | message | left on disk |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
