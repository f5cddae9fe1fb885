"""Open a self-contained HTML page in headless Chromium and report what a reader would see.

A probe script is injected into the page: it records script errors, failed
resources and ``console.error`` calls, and on load counts the images and the
ones that did not decode. Needs Debian's chromium (the Makefile's test set-up
installs it: ``apt-get install -y --no-install-recommends chromium``).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

NO_CHROMIUM = ("headless Chromium not installed (Debian: apt-get update && "
               "apt-get install -y --no-install-recommends chromium)")

_PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  window.__errors.push(t && t.tagName ? 'resource ' + t.tagName + ' ' + String(t.src || t.href || '').slice(0, 60)
                                      : 'error ' + e.message);
}, true);
var __ce = console.error;
console.error = function () { window.__errors.push('console ' + Array.prototype.join.call(arguments, ' ')); __ce.apply(console, arguments); };
window.addEventListener('load', function () {
  var bad = [];
  for (var i = 0; i < document.images.length; i++) {
    var im = document.images[i];
    if (!im.complete || im.naturalWidth === 0) bad.push(im.alt);
  }
  var d = document.createElement('pre'); d.id = '__probe';
  d.textContent = JSON.stringify({images: document.images.length, broken: bad, errors: window.__errors});
  document.body.appendChild(d);
});
</script>"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


@dataclass
class PageResult:
    probe: dict  # images, broken, errors
    console: list  # console lines Chromium logged
    dom: str  # the rendered DOM before the probe's output


def open_in_chromium(text: str, page: Path, scratch: Path) -> PageResult:
    """Write ``text`` with the probe to ``page`` and load it in headless Chromium (no network)."""
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text.replace("<head>", "<head>\n" + _PROBE, 1), encoding="utf-8")
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--no-default-browser-check", f"--user-data-dir={scratch / 'profile'}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom",
           page.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=dict(os.environ, HOME=str(scratch)))
    m = re.search(r'<pre id="__probe">(.*?)</pre>', res.stdout, re.S)
    assert m, f"no probe output; rc={res.returncode}; stderr tail: {res.stderr[-2000:]}"
    return PageResult(probe=json.loads(html.unescape(m.group(1))),
                      console=[line for line in res.stderr.splitlines() if "CONSOLE" in line],
                      dom=res.stdout.split('<pre id="__probe">')[0])
