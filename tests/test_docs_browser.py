"""The built documentation renders in a browser (issue 25): headless Chromium opens build/docs/index.html and
a tutorial page, every stylesheet and image of them loads, and a screenshot of each is saved under build/.

Skipped where /usr/bin/chromium (Debian's ``chromium``) is absent or the site is not built; ``make docs``
builds it and ``.ci/run`` installs Chromium, builds the docs and runs this file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE = os.path.join(ROOT, "build", "docs")
CHROMIUM = os.environ.get("NAS3D_CHROMIUM", "/usr/bin/chromium")
PAGES = {"index": "index.html", "tutorial": os.path.join("tutorials", "tutorial_5_inference.html")}

pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (Debian: apt-get install chromium)"),
    pytest.mark.skipif(not os.path.exists(os.path.join(SITE, "index.html")),
                       reason="the docs are not built (make docs)"),
]

# Run in the page after it loaded: what a reader would miss, as JSON in the body's data-check attribute.
PROBE = """
<script>
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var sheets = Array.from(document.querySelectorAll('link[rel="stylesheet"]'));
  var report = {
    title: document.title,
    heading: (document.querySelector("h1") || {}).textContent || "",
    images: images.length,
    broken_images: images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                         .map(function (i) { return i.getAttribute("src"); }),
    stylesheets: sheets.length,
    broken_stylesheets: sheets.filter(function (l) { return !l.sheet; })
                              .map(function (l) { return l.getAttribute("href"); }),
    text_chars: document.body.innerText.length
  };
  document.body.setAttribute("data-check", JSON.stringify(report));
});
</script>
"""


def chromium(*args: str, timeout: int = 120) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--allow-file-access-from-files", "--hide-scrollbars", "--virtual-time-budget=10000", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def check_page(name: str, page: str) -> dict:
    path = os.path.join(SITE, page)
    assert os.path.exists(path), f"{path} missing: the docs build did not write it"
    with open(path, encoding="utf-8") as f:
        html = f.read()
    probe = os.path.join(os.path.dirname(path), f"_browser_check_{name}.html")  # same folder: same relative links
    with open(probe, "w", encoding="utf-8") as f:
        f.write(html.replace("</body>", PROBE + "</body>"))
    try:
        dom = chromium("--dump-dom", "file://" + probe)
    finally:
        os.remove(probe)
    match = re.search(r'data-check="([^"]*)"', dom)
    assert match, f"{page}: the page's load event never ran"
    report = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    shot = os.path.join(ROOT, "build", f"docs-{name}.png")
    chromium(f"--screenshot={shot}", "--window-size=1280,1600", "file://" + path)
    assert os.path.getsize(shot) > 10_000, f"{shot}: an almost empty screenshot"
    return report


def test_the_index_renders():
    report = check_page("index", PAGES["index"])
    assert "nas3d_fast" in report["title"] and "nas3d_fast" in report["heading"], report
    assert report["stylesheets"] >= 1 and not report["broken_stylesheets"], report
    assert not report["broken_images"], report
    assert report["text_chars"] > 1000, report


def test_a_tutorial_renders_with_its_figures():
    report = check_page("tutorial", PAGES["tutorial"])
    assert "inference" in report["heading"].lower(), report
    assert report["stylesheets"] >= 1 and not report["broken_stylesheets"], report
    assert report["images"] >= 1 and not report["broken_images"], report
    assert "Total running time" in open(os.path.join(SITE, PAGES["tutorial"]), encoding="utf-8").read()
