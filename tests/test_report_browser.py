"""The report rendered by a real headless chromium (Debian's, through selenium + chromedriver).

Checks what a reader sees: every table has rows, every image decoded (``naturalWidth > 0``), no console errors,
and no request left the page (it is self-contained). Skips with the reason when chromium / chromedriver are
missing (``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from test_report import make_report_inputs

pytestmark = pytest.mark.browser



def _open(driver, page: Path) -> None:
    driver.get(page.resolve().as_uri())
    driver.execute_script("return document.readyState")  # get() returns after the load event


def _check_rendered(driver, expect_images: int) -> dict:
    """Tables with rows, decoded images, no console errors, no resource fetched from anywhere."""
    info = driver.execute_script("""
        const tables = [...document.querySelectorAll('table')];
        const imgs = [...document.images];
        return {
          tables: tables.length,
          emptyTables: tables.filter(t => t.querySelectorAll('tbody tr').length === 0).length,
          rows: tables.map(t => t.querySelectorAll('tbody tr').length),
          images: imgs.length,
          broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
          widths: imgs.map(i => i.naturalWidth),
          sections: [...document.querySelectorAll('section')].map(s => s.id),
          resources: performance.getEntriesByType('resource').map(r => r.name),
          title: document.title,
        };""")
    assert info["tables"] > 0 and info["emptyTables"] == 0, info["rows"]
    assert info["images"] == expect_images, info
    assert info["broken"] == [], info["broken"]
    assert info["resources"] == [], info["resources"]  # data URIs only: nothing is fetched
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe == [], severe
    return info


def test_multilabel_report_renders_in_chromium(browser, tmp_path):
    from medistill.report import build_report

    page = build_report(make_report_inputs(tmp_path / "runs"), tmp_path / "report.html")
    _open(browser, page)
    info = _check_rendered(browser, expect_images=5 + 4 + 9)
    assert info["sections"] == ["comparison", "runs", "training", "per-label", "roc", "calibration", "explanations",
                                "export"]
    assert info["title"] == "medistill report"
    # the comparison table: teacher, KD student, no-KD student
    assert info["rows"][0] == 3
    # the teacher / student explanation pairs are shown side by side: same row, teacher left of student
    pos = browser.execute_script("""
        const row = document.querySelector('table.pairs tbody tr');
        return [...row.querySelectorAll('img')].map(i => i.getBoundingClientRect().left);""")
    assert len(pos) == 2 and pos[0] < pos[1]
    if os.environ.get("MEDISTILL_REPORT_SCREENSHOT"):  # eyeball the page: MEDISTILL_REPORT_SCREENSHOT=out.png
        browser.set_window_size(1400, browser.execute_script("return document.body.scrollHeight"))
        browser.save_screenshot(os.environ["MEDISTILL_REPORT_SCREENSHOT"])
        shutil.copy(page, Path(os.environ["MEDISTILL_REPORT_SCREENSHOT"]).with_suffix(".html"))


def test_multiclass_report_renders_in_chromium(browser, tmp_path):
    from medistill.report import build_report

    page = build_report(make_report_inputs(tmp_path / "runs", task="multiclass"), tmp_path / "report.html")
    _open(browser, page)
    info = _check_rendered(browser, expect_images=5 + 3 + 4 + 9)
    assert "confusion" in info["sections"]
