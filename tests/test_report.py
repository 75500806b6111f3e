"""`spikec report`: a self-contained HTML page about a compiled model (docs/report.md)."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from spike_graphs import calib_folder, exported
from spikec.compiler import compile_path
from spikec.frontend.export import sample_image
from spikec.isa.container import SbinFile, write_sbin
from spikec.package import SbinModel
from spikec.passes.options import SpikeOptions

INJECTED = '<script>alert("x")</script>$\\frac{a}{b}$'


@pytest.fixture(scope="module")
def sbin(tmp_path_factory) -> Path:
    """tiny-llava at Tv/Tt = 3/4, calibrated (so MED is measured) and lowered to the ISA."""
    out = tmp_path_factory.mktemp("report") / "m.sbin"
    opts = SpikeOptions(tv=3, tt=4, calib=str(calib_folder())).validate()
    compile_path(exported("tiny-llava"), out, isa=True, options=opts)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("imgs")
    sample_image(64, 48).save(d / "a.png")
    sample_image(40, 40).save(d / "b.png")
    (d / "notes.txt").write_text("not an image")
    return d


class Page(html.parser.HTMLParser):
    """Every tag, the <img> sources and the visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.imgs: list[str] = []
        self.urls: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        for key in ("src", "href"):
            if a.get(key) is not None and tag != "img":
                self.urls.append(a[key])

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> Page:
    p = Page()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    return p


def check_images(page: Page) -> None:
    from PIL import Image

    assert page.imgs
    for src in page.imgs:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix), src[:60]
        data = base64.b64decode(src[len(prefix):], validate=True)
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG"
            im.verify()


def layer_names(path: Path) -> list[str]:
    with SbinModel(path) as m:
        report = m.section_json("report")
    return [r["name"] for g in report["extra"]["graphs"].values() for r in g.get("layers", [])]


def test_report_page(run_cli, sbin, images, tmp_path):
    out = tmp_path / "r.html"
    r = run_cli("report", str(sbin), "--images", str(images), "-o", str(out))
    assert r.code == 0, r.err
    page = parse(out)
    check_images(page)
    assert "script" not in page.tags and not page.urls  # static, nothing loaded from elsewhere
    text = " ".join(page.text)
    names = layer_names(sbin)
    assert "model.language_model.layers.0.self_attn.q_proj" in names
    for name in names:
        assert name in text
    for heading in ("MED and timesteps", "Spike rate and SOPs per layer", "Accelerator: cycles and energy",
                    "T[text]", "T[vision]", "e[text]", "rate[vision]", "SOPs[text]", "effective timesteps per token"):
        assert heading in text, heading
    # one MED plot (the LM; the vision encoder's e only), timesteps and spikes per graph, the accelerator
    alts = re.findall(r'<img class="plot" alt="([^"]*)"', out.read_text())
    assert "MED per layer and modality, graph lm" in alts
    assert "timesteps per layer and modality, graph lm" in alts
    assert "spike rate and SOPs per layer, graph vision" in alts
    assert "accelerator cycle and energy breakdown" in alts
    assert "a.png" in text and "b.png" in text and "notes.txt" not in text


def test_report_accuracy(run_cli, sbin, images, tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    sample_image(64, 48).save(data / "images" / "0.png")
    rows = [{"image": "images/0.png", "prompt": "What is in the image?", "answer": "a"},
            {"image": "images/0.png", "prompt": "Describe the colours.", "answer": "b"}]
    (data / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "r.html"
    r = run_cli("report", str(sbin), "--data", str(data), "--no-fpga", "-o", str(out))
    assert r.code == 0, r.err
    page = parse(out)
    check_images(page)
    text = " ".join(page.text)
    assert "Accuracy against effective timesteps" in text and "/2 =" in text
    assert "Accelerator" not in text and "Not run: give --images DIR." in text


def test_injected_names_are_escaped(run_cli, sbin, tmp_path):
    """The .sbin is untrusted: names and messages of its report section are text in the page."""
    bad = tmp_path / "bad.sbin"
    with SbinFile(sbin) as f:
        sections = [(s.name, s.kind, f.read(s.name)) for s in f.sections.values()]
    for i, (name, kind, data) in enumerate(sections):
        if name == "report":
            report = json.loads(data)
            lm = report["extra"]["graphs"]["lm"]
            lm["layers"][0]["name"] = INJECTED
            lm["layers"][1]["timesteps"] = {INJECTED: 2, "text": "<b>4</b>", "vision": None}
            lm["med"]["layers"][0]["e"][INJECTED] = 0.5
            lm["msts"]["mode"] = "<img src=x onerror=alert(1)>"
            report["extra"]["graphs"]["vision"]["med"]["skipped"] = INJECTED
            sections[i] = (name, kind, json.dumps(report).encode())
    write_sbin(bad, sections)
    out = tmp_path / "r.html"
    r = run_cli("report", str(bad), "-o", str(out))
    assert r.code == 0, r.err
    raw = out.read_text()
    assert "<script" not in raw and "<img src=x" not in raw
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in raw
    assert "&lt;img src=x onerror=alert(1)&gt;" in raw
    page = parse(out)
    check_images(page)
    assert INJECTED in " ".join(page.text)  # shown as text, `$` included (no mathtext in the plots)
    assert page.tags.count("img") == len(page.imgs) and "script" not in page.tags


def test_report_errors(run_cli, sbin, tmp_path):
    not_sbin = tmp_path / "x.sbin"
    not_sbin.write_bytes(b"hello")
    r = run_cli("report", str(not_sbin), "-o", str(tmp_path / "r.html"))
    assert r.code == 1 and str(not_sbin) in r.err and "not a .sbin" in r.err
    r = run_cli("report", str(sbin), "--images", str(tmp_path / "missing"), "-o", str(tmp_path / "r.html"))
    assert r.code == 1 and "--images" in r.err
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("report", str(sbin), "--images", str(empty), "-o", str(tmp_path / "r.html"))
    assert r.code == 1 and f"--images {empty}" in r.err and "no image files" in r.err
    r = run_cli("report", str(sbin), "--float-model", str(tmp_path), "-o", str(tmp_path / "r.html"))
    assert r.code == 1 and "--float-model goes with --data" in r.err
    assert not (tmp_path / "r.html").exists()  # no partial output


LOADED_MARKER = """<script>
window.addEventListener('load', function () {
  var imgs = document.images, ok = imgs.length > 0;
  for (var i = 0; i < imgs.length; i++) if (!(imgs[i].complete && imgs[i].naturalWidth > 0)) ok = false;
  document.body.setAttribute('data-images', ok ? 'loaded-' + imgs.length : 'broken');
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Chromium is needed for this check: install it (Debian: apt-get install -y chromium)")


@pytest.mark.slow
def test_page_renders_in_headless_chromium(run_cli, sbin, images, tmp_path):
    """Every embedded image decodes in a real browser (the page itself has no script: the
    check adds one to a copy)."""
    browser = chromium()
    out = tmp_path / "r.html"
    r = run_cli("report", str(sbin), "--images", str(images), "-o", str(out))
    assert r.code == 0, r.err
    n = len(parse(out).imgs)
    probe = tmp_path / "probe.html"
    probe.write_text(out.read_text().replace("</body>", LOADED_MARKER + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--virtual-time-budget=10000"]
        dom = subprocess.run(flags + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
        assert f'data-images="loaded-{n}"' in dom.stdout, (dom.stdout[-500:], dom.stderr[-2000:])
        shot = tmp_path / "shot.png"
        subprocess.run(flags + ["--window-size=1280,2400", f"--screenshot={shot}", out.as_uri()],
                       capture_output=True, text=True, timeout=120)
    from PIL import Image, ImageStat

    with Image.open(shot) as im:
        assert max(ImageStat.Stat(im.convert("L")).stddev) > 10  # not a blank page
