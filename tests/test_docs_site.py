"""The documentation site: it builds strictly, and headless Chromium renders it with its images.

The site is built with ``mkdocs build --strict`` into a temporary folder and served on a local
port. A small harness page (served beside the site, never part of it) loads each checked page
in a same-origin frame, waits for every image to load or fail, and writes what it found
(headings, images, broken images) into its own DOM, which ``chromium --headless --dump-dom``
prints. A screenshot of each page is taken too and checked for content. Skipped when MkDocs
(the ``docs`` extra) or Debian's ``chromium`` is absent; ``make docs-check`` installs both.
"""

from __future__ import annotations

import functools
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# page -> headings that must be on it (h1 first), images it must show at least
PAGES = {
    "": (["hyperloom", "Quick start", "Applications (recipes)"], 0),
    "results/uncertainty/": (["Uncertainty with noise-conditioned hypernetworks"], 2),
}

HARNESS = """<!doctype html><html><body><pre id="result">pending</pre>
<iframe id="page" src="PAGE" width="1280" height="1000"></iframe>
<script>
const frame = document.getElementById("page");
frame.addEventListener("load", async () => {
  const doc = frame.contentDocument;
  const images = Array.from(doc.images);
  await Promise.all(images.map((img) => img.complete ? null :
      new Promise((done) => { img.onload = done; img.onerror = done; })));
  const headings = Array.from(doc.querySelectorAll("h1, h2")).map(
      (h) => ({level: h.tagName, text: h.textContent.replace("\\u00b6", "").trim()}));
  document.getElementById("result").textContent = JSON.stringify({
    title: doc.title,
    headings: headings,
    images: images.map((img) => img.getAttribute("src")),
    broken: images.filter((img) => !(img.complete && img.naturalWidth > 0)).map(
        (img) => img.getAttribute("src")),
  });
});
</script></body></html>"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return out


@pytest.fixture(scope="module")
def server(site):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # the harness lives at /__check__/PAGE, beside the site
            if self.path.startswith("/__check__/"):
                page = "/" + self.path.removeprefix("/__check__/")
                body = HARNESS.replace("PAGE", html.escape(page)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(site))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _chromium(*args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    return subprocess.run(
        [CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_site_builds_strictly_with_every_results_page(site):
    for page in ("index.html", "api/generators/index.html", "results/continual/index.html"):
        assert (site / page).is_file(), page
    # every results page opens with its claims table, before its first section
    for md in sorted((ROOT / "docs" / "results").glob("*.md")):
        if md.name == "README.md":
            continue
        lines = md.read_text().splitlines()
        assert lines[0].startswith("# "), md.name
        first_section = next((i for i, line in enumerate(lines) if line.startswith("## ")), None)
        first_table = next(i for i, line in enumerate(lines) if line.startswith("|"))
        assert first_section is None or first_table < first_section, md.name
        header = [c.strip().lower() for c in lines[first_table].strip("|").split("|")]
        assert header[0].startswith("claim") and "command" in header[-1], (md.name, header)
        assert any("paper" in c for c in header) and any("held" in c for c in header), header


def test_no_committed_doc_names_a_local_path():
    local = re.compile(r"/tmp/|cpu-slot|\.venv/bin|python -m hyperloom\.cli|/work/|/home/")
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found = [
        f"{f.relative_to(ROOT)}:{i}: {line.strip()}"
        for f in files
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if local.search(line)
    ]
    assert not found, "\n".join(found)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_renders_in_headless_chromium(server, page, tmp_path):
    headings, min_images = PAGES[page]
    dump = _chromium("--virtual-time-budget=20000", "--dump-dom", f"{server}/__check__/{page}")
    match = re.search(r'<pre id="result">(.*?)</pre>', dump.stdout, re.S)
    assert match and match.group(1) != "pending", dump.stdout[-2000:] + dump.stderr[-2000:]
    found = json.loads(html.unescape(match.group(1)))
    texts = [h["text"] for h in found["headings"]]
    assert found["headings"][0] == {"level": "H1", "text": headings[0]}, texts
    assert set(headings) <= set(texts), texts
    assert len(found["images"]) >= min_images, found["images"]
    assert found["broken"] == [], found["broken"]

    shot = tmp_path / "page.png"
    _chromium("--window-size=1280,1600", f"--screenshot={shot}", f"{server}/{page}")
    pytest.importorskip("matplotlib")
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))  # (H, W, channels), floats in [0, 1]
    assert pixels.shape[:2] == (1600, 1280)
    assert pixels.std() > 0.05  # text and images, not a blank page


# Guide pages whose Python examples are complete programs; each page's blocks run in order in
# one namespace (the README's are run by test_readme.py).
RUNNABLE = ("conditioners.md", "generators.md", "continual.md", "uncertainty.md")


@pytest.mark.parametrize("page", RUNNABLE)
def test_guide_python_examples_run(page, capsys):
    path = ROOT / "docs" / page
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    assert blocks, f"{page} has no python example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(path), "exec"), namespace)
