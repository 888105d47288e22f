"""QC pages (fm2s.report): the workflow's page of a tiny demo run, `fm2s eval --html`, and the
demo page loaded in headless Chromium (images decoded, no broken links)."""

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import skip_unless_in_ci
from PIL import Image

from fm2s.cli import main
from fm2s.pipeline import denoise_stack
from fm2s.planeio import write_image
from fm2s.report import noise_sigma, pick_region, plot_before_after, write_run_report
from fm2s.settings import make_settings
from fm2s.synthetic import clean_plane, noisy_plane, write_synthetic_stack

REPO = Path(__file__).resolve().parents[1]
TINY = {"steps": 2, "crop_size": 16, "batch_size": 1}
CHROMIUM = Path("/usr/bin/chromium")
STACK_SECTIONS = ["Images", "Noise level", "Denoise time", "Networks", "Noise model",
                  "Settings and provenance"]


class Page(HTMLParser):
    """Headings, image sources, link targets, ids and tags of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.headings: list[tuple[str, str]] = []
        self.images: list[str] = []
        self.hrefs: list[str] = []
        self.ids: set[str] = set()
        self.tags: set[str] = set()
        self._heading: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if "href" in attrs:
            self.hrefs.append(attrs["href"])
        if tag in ("h2", "h3"):
            self._heading = tag
            self.headings.append((tag, ""))

    def handle_data(self, data):
        if self._heading:
            tag, text = self.headings[-1]
            self.headings[-1] = (tag, text + data)

    def handle_endtag(self, tag):
        if tag == self._heading:
            self._heading = None


def check_self_contained(text: str) -> Page:
    """Every image an embedded PNG that decodes; links only to anchors of the page."""
    page = Page(text)
    assert page.images
    for src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix), src[:60]
        data = base64.b64decode(src[len(prefix):], validate=True)
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            assert image.width > 50 and image.height > 50
    for href in page.hrefs:
        assert href.startswith("#") and href[1:] in page.ids, href
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|file:|//)""", text)
    return page


def run_snakemake(workdir: Path, *args: str) -> str:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
               "-d", str(workdir), "--cores", "2", "--configfile",
               str(workdir / "test-config.yaml"), *args]  # fmt: skip
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600,
                          check=False)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{output[-5000:]}")
    return output


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The workflow's built-in demo (3 x 2 x 4 planes, 2 jobs), with 32 x 32 planes and a
    2-step schedule: its QC page is results/qc/report.html."""
    pytest.importorskip("snakemake", reason="the workflow needs pip install -e '.[workflow]'")
    import yaml

    workdir = tmp_path_factory.mktemp("demo")
    config = {"demo": {"size": 32, "overrides": TINY, "planes_per_job": 12},
              "denoise": {"device": "cpu"}, "report": {"zoom": 16}}
    (workdir / "test-config.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(workdir)
    return workdir


def test_demo_page_has_every_section_and_only_embedded_pngs(demo_run):
    page_path = demo_run / "results/qc/report.html"
    text = page_path.read_text()
    page = check_self_contained(text)
    assert ("h2", "demo") in page.headings
    assert [h for tag, h in page.headings if tag == "h3"] == STACK_SECTIONS
    assert len(page.images) == 2 + 2  # a figure per channel, noise, time
    for expected in ("skimage.restoration.estimate_sigma", "max over z (4 planes)",
                     "profile", "24 planes on cpu", "settings_digest", "demo.ome.tif",
                     "Training and denoise jobs", "chunk-0", "training-0", "workflow config",
                     "group-0", "network(s) denoised 24 planes"):
        assert expected in _png_free(text), expected
    # per-plane records stay in the store: the page summarises them
    assert "estimate.planes" not in text and "0,1,3" not in _png_free(text)
    assert page_path.stat().st_size < 1_000_000


def _png_free(text: str) -> str:
    return re.sub(r"data:image/png;base64,[^\"]+", "", text)


def test_demo_page_is_in_the_snakemake_report_and_rerun_does_nothing(demo_run):
    assert "Nothing to be done" in run_snakemake(demo_run, "-n")
    run_snakemake(demo_run, "--report", "snakemake-report.html")
    text = (demo_run / "snakemake-report.html").read_text()
    assert "fm2s.report.write_run_report" in text and "report.html" in text


def test_report_of_a_single_plane_and_sampled_noise_planes(tmp_path):
    single = tmp_path / "one.png"
    write_image(single, noisy_plane(clean_plane((48, 40), seed=1), seed=2))
    write_synthetic_stack(tmp_path / "cells.ome.tif", t=2, c=1, z=5, size=32)
    settings = make_settings("confocal", **TINY)
    stores = {}
    for name, source in (("one", single), ("cells", tmp_path / "cells.ome.tif")):
        stores[name] = tmp_path / f"{name}.ome.zarr"
        denoise_stack(source, stores[name], settings=settings, device="cpu", progress=False)
    out = write_run_report(tmp_path / "qc" / "page.html", stores, noise_planes=3, zoom=8)
    text = out.read_text()
    page = check_self_contained(text)
    assert [h for tag, h in page.headings if tag == "h2"] == ["one", "cells"]
    assert len(page.images) == 2 * 3  # no projection panel for a single plane
    assert "3 of 10 planes (evenly spaced)" in text and "max over z (5 planes)" in text
    assert not list((tmp_path / "qc").glob(".*"))  # no temporary file left
    # the same through the command line, inputs found from the stores' provenance
    assert main(["-q", "report", *map(str, stores.values()), "-o", str(tmp_path / "cli.html"),
                 "--noise-planes", "3", "--zoom", "8"]) == 0
    cli = check_self_contained((tmp_path / "cli.html").read_text())
    assert [h for tag, h in cli.headings if tag == "h2"] == ["one", "cells"]
    # an input deleted after its store was made (a nightly run): the page says so, the rest
    # is drawn
    (tmp_path / "cells.ome.tif").unlink()
    text = write_run_report(tmp_path / "gone.html", stores, noise_planes=3, zoom=8).read_text()
    page = check_self_contained(text)
    assert [h for tag, h in page.headings if tag == "h2"] == ["one", "cells"]
    assert len(page.images) == 3 and "cells.ome.tif</code> no longer exists" in text


def test_eval_html_page(tmp_path):
    noisy_dir, truth_dir = tmp_path / "noisy", tmp_path / "gt"
    for kind, seed in (("Confocal_a_1", 1), ("Confocal_a_2", 2), ("WideField_b_1", 3)):
        clean = clean_plane((40, 48), seed=seed)
        write_image(truth_dir / f"{kind}.png", np.rint(clean * 255).astype(np.uint8))
        write_image(noisy_dir / f"{kind}.png", noisy_plane(clean, seed=seed + 10))
    page_path = tmp_path / "eval.html"
    args = ["-q", "eval", str(noisy_dir), str(truth_dir), "--html", str(page_path),
            "--device", "cpu", *(f"--set={k}={v}" for k, v in TINY.items())]  # fmt: skip
    assert main(args) == 0
    text = page_path.read_text()
    page = check_self_contained(text)
    assert [h for tag, h in page.headings if tag == "h2"] == ["Per group", "Per image", "Crops"]
    assert len(page.images) == 2  # a crop grid per group
    for expected in ("Confocal_a_2.png", "WideField_b_1.png", "psnr_noisy", "ground truth",
                     "widefield", "<td>all</td>"):
        assert expected in _png_free(text), expected


def test_pick_region_estimate_noise_and_before_after_picture(tmp_path):
    plane = np.zeros((50, 60))
    plane[45:50, 0:4] = 9  # a corner: the window is clipped to the plane
    assert pick_region(plane, 20) == (slice(30, 50), slice(0, 20))
    assert pick_region(plane, 100) == (slice(0, 50), slice(0, 60))
    rng = np.random.default_rng(0)
    assert noise_sigma(1000 + 20 * rng.standard_normal((96, 96))) == pytest.approx(20, rel=0.1)
    path = plot_before_after(rng.random((64, 64)), rng.random((64, 64)), tmp_path / "x.png",
                             zoom=16)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 400


# -- headless Chromium ------------------------------------------------------------------------

# Appended to a copy of the page: after the load event (all images decoded or failed), it
# writes what the browser saw into the DOM, which --dump-dom then prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const links = Array.from(document.querySelectorAll("a[href]"));
  const out = document.createElement("pre");
  out.id = "qc-probe";
  out.textContent = JSON.stringify({
    images: images.length,
    rendered: images.filter((i) => i.complete && i.naturalWidth > 0).length,
    links: links.length,
    broken_links: links.filter((a) => {
      const href = a.getAttribute("href");
      return !(href.startsWith("#") && document.getElementById(href.slice(1)));
    }).length,
    fetched: performance.getEntriesByType("resource").map((e) => e.name),
    title: document.title,
  });
  document.body.appendChild(out);
});
</script>"""


def browse(page: Path, tmp_path: Path) -> dict:
    """Load a copy of `page` with the probe in headless Chromium; the probe's findings."""
    if not CHROMIUM.is_file():
        skip_unless_in_ci("chromium not installed (Debian package chromium)")
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    profile = tmp_path / "chromium-profile"
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
               "--dump-dom", probed.as_uri()]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    shutil.rmtree(profile, ignore_errors=True)
    found = re.search(r'<pre id="qc-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium exit {done.returncode}:\n{done.stderr[-3000:]}"
    return json.loads(found[1].replace("&quot;", '"').replace("&amp;", "&"))


def test_demo_page_renders_in_headless_chromium(demo_run, tmp_path):
    seen = browse(demo_run / "results/qc/report.html", tmp_path)
    assert seen["title"] == "fm2s QC report"
    assert seen["images"] == 4 and seen["rendered"] == 4
    assert seen["links"] >= 1 and seen["broken_links"] == 0
    assert seen["fetched"] == []  # nothing loaded besides the page itself


def test_chromium_probe_sees_broken_images_and_links(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><title>bad</title></head><body>'
                    '<img src="data:image/png;base64,iVBORw0KGgoAAAA=" alt="corrupt">'
                    '<img src="missing.png" alt="missing"><a href="#nowhere">x</a></body></html>')
    seen = browse(page, tmp_path)
    assert seen["images"] == 2 and seen["rendered"] == 0 and seen["broken_links"] == 1
