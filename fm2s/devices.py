"""Where the arithmetic runs: the torch device, CPU threads, and how many planes go together.

On a CPU, planes train and are applied one at a time (grouping gains nothing there, and a lone
plane gives bitwise the same result either way); on CUDA, up to ``CUDA_GROUP_SIZE`` networks
train in one grouped pass and planes are applied in batches (:func:`inference_batch`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = ["CUDA_GROUP_SIZE", "INFERENCE_PIXELS", "inference_batch", "job_device", "pack_size",
           "resolve_device", "set_threads"]

logger = logging.getLogger(__name__)


#: Planes trained in one grouped pass on a CUDA device (on CPU, one at a time: there grouping
#: gains nothing and a lone plane gives bitwise the same result either way).
CUDA_GROUP_SIZE = 16


def pack_size(device: torch.device) -> int:
    """Networks trained together in one grouped pass on `device` (one at a time on a CPU)."""
    return CUDA_GROUP_SIZE if device.type == "cuda" else 1


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'`` or ``'cuda:N'``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        msg = f"unknown device {device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
        raise ValueError(msg) from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            msg = f"device {device!r} requested but CUDA is not available on this machine"
            raise ValueError(msg)
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            msg = f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible"
            raise ValueError(msg)
    elif resolved.type != "cpu":
        msg = f"unsupported device {device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
        raise ValueError(msg)
    return resolved


def set_threads(threads: int | None) -> None:
    """Set torch's CPU threads (None: leave torch's own choice)."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            msg = f"threads must be an int >= 1, got {threads!r}"
            raise ValueError(msg)
        torch.set_num_threads(threads)


#: Most pixels of one inference pass on CUDA (its activations: 24 channels of float32 each).
INFERENCE_PIXELS = 1 << 24


def inference_batch(device: torch.device, plane_shape: tuple[int, int]) -> int:
    """Planes applied together in one forward pass on `device` (one at a time on a CPU).

    On CUDA, up to ``CUDA_GROUP_SIZE`` planes, fewer for planes so large that a batch would
    exceed ``INFERENCE_PIXELS`` (4 planes of 2048 x 2048). Every pass is padded to this size
    (:func:`fm2s.train.predict_batch`), so the kernels do not depend on the batch's content.
    """
    if device.type != "cuda":
        return 1
    return max(1, min(CUDA_GROUP_SIZE, INFERENCE_PIXELS // max(1, plane_shape[0] * plane_shape[1])))


_NO_GPU = ("", "-1", "none", "nodevfiles")


_gpu_locks: list = []  # open lock files of the GPUs this process claimed (see job_device)


def job_device(
    device: str = "auto",
    *,
    gpus: int = 1,
    environ: Mapping[str, str] | None = None,
    lock_dir: str | os.PathLike | None = None,
) -> str:
    """The torch device of a workflow job.

    ``"auto"`` gives CUDA only when the job was given a GPU: `gpus` >= 1 (its ``gpu``
    resource), torch sees a CUDA device, and ``CUDA_VISIBLE_DEVICES`` does not hide them (in a
    SLURM job it must be set, as SLURM does for jobs that got a GPU). Otherwise ``"cpu"``.
    Outside SLURM with several GPUs visible, concurrent jobs claim different GPUs through lock
    files in `lock_dir` (default: ``$TMPDIR/fm2s-gpu-locks``), held until the process ends, so
    ``snakemake --resources gpu=K`` spreads K jobs over K GPUs. Any other value of `device`
    (``"cpu"``, ``"cuda"``, ``"cuda:N"``) is returned as it is.
    """
    if device != "auto":
        return device
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    in_slurm = "SLURM_JOB_ID" in environ
    if gpus < 1 or (visible is None and in_slurm):
        return "cpu"
    if visible is not None and visible.strip().lower() in _NO_GPU:
        return "cpu"
    if not torch.cuda.is_available():
        if visible is not None:  # the scheduler gave this job a GPU
            why = ("this torch has no CUDA support (a CPU build)" if torch.version.cuda is None
                   else "torch sees no CUDA device (driver or CUDA_VISIBLE_DEVICES)")
            logger.warning("the job was given a GPU (CUDA_VISIBLE_DEVICES=%s) but runs on the "
                           "CPU: %s", visible, why)
        return "cpu"
    count = torch.cuda.device_count()
    if count == 1 or in_slurm:
        return "cuda:0"
    ids = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(count)]
    lock_dir = Path(lock_dir or Path(tempfile.gettempdir()) / "fm2s-gpu-locks")
    lock_dir.mkdir(parents=True, exist_ok=True)
    import fcntl

    for index, ident in enumerate(ids[:count]):
        handle = open(lock_dir / f"gpu-{ident.replace('/', '_')}.lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _gpu_locks.append(handle)  # held until the process ends
        return f"cuda:{index}"
    logger.warning("all %d visible GPUs are claimed by other fm2s jobs; sharing cuda:0", count)
    return "cuda:0"
