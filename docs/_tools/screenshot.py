"""Make docs/_static/widget-uploading.png: the demo's "One document" widget mid-upload.

Run from the repository root (needs the demo and test extras, and Debian's chromium)::

    python docs/_tools/screenshot.py

The demo reads the upload at 4 MiB/s (``DEMO_THROTTLE_KBPS``), so the bar is caught
between 40 and 60 %, with the bytes, speed and time left the server measured.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.support.browser_support import launch_chromium, make_file, run_demo  # noqa: E402

OUT = ROOT / "docs" / "_static" / "widget-uploading.png"
SIZE = 48 * 1000 * 1000


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        source = make_file(Path(tmp) / "quarterly-report.pdf", SIZE)
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 760, "height": 900}, device_scale_factor=1)
        with run_demo(Path(tmp), DEMO_THROTTLE_KBPS=4096) as demo:
            page.goto(demo.url + "/")
            page.set_input_files("#document", source)
            page.click("#document_upload")
            page.wait_for_function(
                "() => { const v = +document.getElementById('document_progressBar')"
                ".getAttribute('aria-valuenow'); return v >= 40 && v <= 60; }",
                timeout=60_000,
            )
            page.wait_for_function(  # speed and time left are shown from the second poll
                "() => /left/.test(document.getElementById('document_eta').textContent)"
            )
            page.locator("#document_component").screenshot(path=str(OUT))
            page.click("#document_cancel")
        browser.close()
    print(OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
