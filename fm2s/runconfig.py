"""What a run denoises and how, from a validated workflow configuration (plain dicts).

The workflow's ``common.smk`` calls these with sections of ``config/config.yaml`` (already
checked against its schema) and turns :class:`ConfigError` into Snakemake's error; the logic
lives here so that it can be tested without Snakemake.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .inputs import scan_folder, stack_name
from .settings import Settings, make_settings

__all__ = [
    "RUN_FOLDERS",
    "STORE_SUFFIX",
    "ConfigError",
    "RunInputs",
    "find_inputs",
    "is_run_output",
    "run_settings",
    "settings_folder",
    "vanished_inputs",
]

STORE_SUFFIX = ".denoised.ome.zarr"
"""Suffix of the denoised store of an input, ``<output root>/<name>`` + this."""
RUN_FOLDERS = ("qc", "logs", "benchmarks", ".fm2s")
"""Folders a run writes under the output root besides the stores: the QC page, the jobs' logs
and benchmarks, and the intermediate models and chunks."""
_SETTINGS_FOLDER = re.compile(r"[0-9a-f]{12}-seed-?\d+(-range.*)?")


class ConfigError(ValueError):
    """A configuration that names no input, or inputs that collide, or unknown settings."""


@dataclass
class RunInputs:
    """The inputs of a run.

    Attributes
    ----------
    inputs : dict of str to Path
        Output name to input path.
    demo : str or None
        The demo input's name when the run denoises the built-in demo (no input configured).
    waiting : dict of Path to str
        Inputs of the acquisition folder left for the next run, with the reason.
    """

    inputs: dict[str, Path]
    demo: str | None = None
    waiting: dict[Path, str] = field(default_factory=dict)


def find_inputs(config: dict[str, Any], *, main_process: bool = True,
                now: float | None = None) -> RunInputs:
    """The inputs of a run: ``inputs``, the complete ones of ``acquisition.folder``, else the demo.

    Parameters
    ----------
    config : dict
        The whole validated configuration (``inputs``, ``acquisition``, ``output``, ``demo``).
    main_process : bool
        False in jobs that re-read the workflow (e.g. on SLURM): they take the folder's inputs
        as they are, since the main process already decided which ones are complete.
    now : float, optional
        The current time (``time.time()``), for the folder's quiet period; for tests.

    Raises
    ------
    ConfigError
        Two inputs with the same output name, a missing acquisition folder, or nothing to do
        with the demo disabled.
    """
    found: dict[str, Path] = {}

    def add(name: str, path: str | os.PathLike) -> None:
        if name in found:
            msg = (f"inputs {found[name]} and {path} would both be written to {name!r}; "
                   "rename one of them")
            raise ConfigError(msg)
        found[name] = Path(path)

    for entry in config["inputs"]:
        add(stack_name(entry), entry)
    acquisition = config["acquisition"]
    waiting: dict[Path, str] = {}
    if acquisition["folder"]:
        try:
            ready, waiting = scan_folder(
                acquisition["folder"], acquisition["patterns"],
                quiet_seconds=acquisition["quiet_seconds"] if main_process else 0,
                settle_seconds=acquisition["settle_seconds"] if main_process else 0, now=now)
        except FileNotFoundError as error:
            raise ConfigError(f"config acquisition.folder: {error}") from None
        root = Path(config["output"]["root"]).resolve()
        if Path(acquisition["folder"]).resolve() in root.parents:
            def ours(path: Path) -> bool:  # a results folder inside the acquisition folder
                return root in path.resolve().parents
        else:  # results written into the acquisition folder itself (or around it)
            def ours(path: Path) -> bool:
                return is_run_output(path, root)
        for name, path in ready.items():
            if not ours(path):
                add(name, path)
        waiting = {path: why for path, why in waiting.items() if not ours(path)}
    if found or config["inputs"] or acquisition["folder"]:
        return RunInputs(found, None, waiting)
    demo = config["demo"]
    if not demo["enabled"]:
        raise ConfigError("nothing to denoise: set `inputs` or `acquisition.folder` in the "
                          "config (or demo.enabled: true)")
    name = stack_name(demo["path"])
    return RunInputs({name: Path(demo["path"])}, name)


def is_run_output(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether `path` is (inside) something a run writes under the output `root`: a denoised
    store (``*``:data:`STORE_SUFFIX`), a :data:`RUN_FOLDERS` folder, or a settings folder of
    ``output.by_settings``. Such paths are never taken for inputs, so results may be written
    into (or next to) the acquisition folder."""
    path, root = Path(path).resolve(), Path(root).resolve()
    if root not in path.parents:
        return False
    parts = path.relative_to(root).parts
    if _SETTINGS_FOLDER.fullmatch(parts[0]) or parts[0] in RUN_FOLDERS:
        return True
    return any(part.endswith(STORE_SUFFIX) for part in parts)


def vanished_inputs(inputs: dict[str, Path], demo: str | None,
                    store_of: Callable[[str], str | os.PathLike]) -> dict[str, Path]:
    """The listed inputs that no longer exist but whose store a past run wrote (kept, and
    left out of this run), by name.

    Raises
    ------
    ConfigError
        An input that does not exist and has no store: it could only fail its jobs.
    """
    gone = {}
    for name, path in inputs.items():
        if name == demo or path.exists():
            continue
        if not Path(store_of(name)).is_dir():
            raise ConfigError(f"input {path}: no such file or folder")
        gone[name] = path
    return gone


def run_settings(config: dict[str, Any], *, demo: bool) -> Settings:
    """The run's :class:`~fm2s.settings.Settings`: ``denoise.preset``, ``recipe`` and
    ``overrides``, then ``demo.overrides`` when the run is the demo, then ``per_plane`` and
    ``neighbours``.

    Raises
    ------
    ConfigError
        An unknown preset, recipe or setting, naming the config keys.
    """
    denoise = config["denoise"]
    overrides = {**denoise["overrides"], **(config["demo"]["overrides"] if demo else {})}
    if denoise["per_plane"]:
        overrides["group_size"] = 1
    if denoise.get("neighbours") == "off":
        overrides["neighbours"] = "off"
    try:
        return make_settings(denoise["preset"], denoise["recipe"], **overrides)
    except ValueError as error:
        keys = "denoise.preset, recipe or overrides" + (" (or demo.overrides)" if demo else "")
        raise ConfigError(f"config {keys}: {error}") from None


def settings_folder(settings: Settings, seed: int, data_range: float | None) -> str:
    """``<digest[:12]>-seed<seed>[-range<data_range>]``: the output folder of
    ``output.by_settings``, one per result-deciding configuration.

    Examples
    --------
    >>> settings_folder(make_settings("confocal"), 0, 4095)[12:]
    '-seed0-range4095'
    """
    tag = f"{settings.digest()[:12]}-seed{seed}"
    if data_range:
        tag += f"-range{data_range:g}"
    return tag
