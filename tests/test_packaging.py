"""pyproject.toml's ranges, the lock (constraints.txt) and the workflow's conda environment
(envs/fm2s.yaml) agree: every dependency is pinned in the lock, within its range, and the
conda environment has the lock's versions, vendor readers included."""

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# conda-forge's names of packages whose PyPI names differ
CONDA_NAMES = {"pytorch": "torch", "dask-core": "dask", "matplotlib-base": "matplotlib"}


def lock() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"constraints.txt: {line!r} is not NAME==VERSION"
        assert canonicalize_name(name) not in pins, f"constraints.txt: {name} twice"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def requirements() -> list[tuple[str, Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra, items in project["optional-dependencies"].items():
        found += [(extra, Requirement(r)) for r in items]
    return found


@pytest.mark.parametrize(("where", "requirement"), requirements(), ids=lambda v: str(v))
def test_every_dependency_is_a_range_and_pinned_within_it(where, requirement):
    pins = lock()
    name = canonicalize_name(requirement.name)
    assert name in pins, f"{requirement.name} ({where}) is not pinned in constraints.txt"
    assert requirement.specifier.contains(pins[name], prereleases=True), (
        f"constraints.txt pins {requirement.name}=={pins[name]}, outside {where}'s "
        f"{requirement.specifier}")
    exact = [s for s in requirement.specifier if s.operator in ("==", "===")]
    assert not exact, f"{requirement} ({where}): a range, not an exact pin (the lock pins it)"


def test_torch_stays_the_local_cpu_wheel():
    """An unpinned torch downloads the newest CUDA build (GBs): the lock pins 2.13.0, which
    the range must allow."""
    assert lock()["torch"] == Version("2.13.0")


def test_conda_environment_has_the_locked_versions_and_the_vendor_readers():
    yaml = pytest.importorskip("yaml")
    env = yaml.safe_load((ROOT / "envs" / "fm2s.yaml").read_text())
    pins = lock()
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    versions = {}
    for item in conda:
        name, _, version = item.partition("=")
        if name not in ("python", "pip"):
            versions[canonicalize_name(CONDA_NAMES.get(name, name))] = version
    for item in pip:
        name, sep, version = item.partition("==")
        assert sep, f"envs/fm2s.yaml: pip item {item!r} is not NAME==VERSION"
        versions[canonicalize_name(name)] = version
    for name, version in versions.items():
        assert Version(version) == pins[name], (
            f"envs/fm2s.yaml: {name} {version}, lock {pins[name]}")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["vendor"]
    missing = {canonicalize_name(Requirement(r).name) for r in wanted} - set(versions)
    assert not missing, f"envs/fm2s.yaml lacks {sorted(missing)}"


def test_make_setup_installs_with_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -c constraints.txt -e" in makefile


def test_workflow_catalog_file():
    """.snakemake-workflow-catalog.yml has the catalog's keys, and claims only what the
    workflow has: conda environments on every rule, no container."""
    yaml = pytest.importorskip("yaml")
    usage = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert set(usage) == {"mandatory-flags", "software-stack-deployment", "report"}
    assert usage["mandatory-flags"]["desc"] and usage["mandatory-flags"]["flags"]
    stack = usage["software-stack-deployment"]
    assert stack == {"conda": True, "apptainer": False, "apptainer+conda": False}
    assert usage["report"] is True
    rules = "".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    assert rules.count("conda:") == rules.count("\nrule ") and "container:" not in rules
