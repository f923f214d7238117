"""``medistill serve`` as a real uvicorn server (a subprocess where ``import torch`` fails), driven by Debian's
headless chromium through selenium + chromedriver, and a small load check over loopback.

The browser tests load the page, upload real images through the file input, and wait for the probabilities and
the heatmap; they skip with the reason when chromium / chromedriver are missing (``.ci/run`` installs them).
The load check (200 requests, 16 in flight, httpx) needs no browser. Stopping the server (Ctrl+C) must remove its
temporary folder.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imaging import write_dicom
from test_serve import LABELS, MRI_IMAGE, NIH_IMAGE, REPO, export_tiny, png_bytes

STARTUP_S = 120  # the server subprocess imports numpy, onnxruntime, FastAPI; the CI machine may be busy


@dataclasses.dataclass
class Server:
    url: str  # http://127.0.0.1:PORT/
    proc: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _start(model: Path, work: Path) -> Server:
    """``medistill -v serve MODEL --port 0`` with torch made unimportable; waits for /healthz."""
    import httpx

    code = "import sys; sys.modules['torch'] = None; from medistill.cli import main; sys.exit(main(sys.argv[1:]))"
    log = work / "server.log"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:  # a file, not a pipe: a full pipe would block the server's logging
        # every client here (the browser, the load test's 16 in flight) is one loopback address, so the cap per
        # client address (its own tests are in test_serve_server.py) is raised to the total
        proc = subprocess.Popen([sys.executable, "-c", code, "-v", "serve", str(model), "--port", "0",
                                 "--max-concurrency", "2", "--max-connections-per-client", "64"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=work, env=env)
    server = Server("", proc, log)
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"medistill serve exited with {proc.returncode}:\n{server.log_text()[-3000:]}")
        m = re.search(r"on (http://127\.0\.0\.1:\d+/)", server.log_text())
        if m:
            server.url = m.group(1)
            try:
                if httpx.get(server.url + "healthz", timeout=5).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
        time.sleep(0.25)
    proc.kill()
    pytest.fail(f"medistill serve did not answer /healthz within {STARTUP_S} s:\n{server.log_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real server for the module; on teardown Ctrl+C stops it and its temporary folder must be gone."""
    model = export_tiny(tmp_path_factory.getbasetemp() / "serve-model")
    srv = _start(model, tmp_path_factory.mktemp("serve"))
    try:
        yield srv
    finally:
        if srv.proc.poll() is None:
            srv.proc.send_signal(signal.SIGINT)
            try:
                srv.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                srv.proc.kill()
                srv.proc.wait()
                pytest.fail(f"medistill serve did not stop on SIGINT:\n{srv.log_text()[-3000:]}")
    text = srv.log_text()
    assert srv.proc.returncode in (0, 130), text[-3000:]
    assert "Application shutdown complete" in text
    folders = re.findall(r"from (\S*medistill-serve-\w+)", text)
    assert folders and not any(Path(f).exists() for f in folders), folders  # the temporary folder was removed
    assert "Traceback" not in text, text[-3000:]


def _wait(driver, script: str, timeout: float = 60):
    """Poll a JS expression until it returns something truthy; returns it."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(script))


SHOWN = """
const img = document.getElementById('heatmap');
const rows = [...document.querySelectorAll('#probabilities tbody tr')];
if (document.getElementById('results').hidden || !img.complete || img.naturalWidth === 0 || !rows.length) return null;
return {label: img.dataset.label, src: img.src.slice(0, 40), srcLength: img.src.length, width: img.naturalWidth,
        height: img.naturalHeight, file: document.getElementById('file-name').textContent,
        rows: rows.map(r => ({label: r.dataset.label, positive: r.classList.contains('positive'),
                              text: r.cells[1].textContent})),
        status: document.getElementById('status').textContent,
        latency: document.getElementById('latency').textContent};
"""


def _upload(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.execute_script("document.getElementById('results').hidden = true; "
                          "document.getElementById('heatmap').removeAttribute('src');")
    driver.find_element(By.ID, "file").send_keys(str(path))


@pytest.mark.browser
@pytest.mark.data
def test_page_predicts_a_real_xray_with_heatmap(browser, server, shared_data):
    import httpx
    from selenium.webdriver.support.ui import Select

    image = shared_data / NIH_IMAGE
    browser.get(server.url)
    assert browser.title == "medistill serve"
    _wait(browser, "return document.getElementById('model-name').textContent === 'tiny_cnn.onnx'")
    assert "yes" in browser.execute_script("return document.getElementById('model-maps').textContent")
    _upload(browser, image)
    shown = _wait(browser, "return (" + "() => {" + SHOWN + "}" + ")()")
    assert shown["src"].startswith("data:image/png;base64,") and (shown["width"], shown["height"]) == (256, 256)
    assert image.name in shown["file"] and "PNG" in shown["file"]
    assert "Model latency" in shown["latency"] and shown["status"] == ""

    # the same answer as the API; rows sorted by probability; positives highlighted; the top label's heatmap
    api = httpx.post(server.url + "api/predict", files={"file": (image.name, image.read_bytes())}, timeout=60).json()
    assert [r["label"] for r in shown["rows"]] == [s["label"] for s in api["ranking"]]
    assert sorted(r["label"] for r in shown["rows"] if r["positive"]) == sorted(api["positives"])
    shown_probs = [float(r["text"]) for r in shown["rows"]]
    assert shown_probs == sorted(shown_probs, reverse=True) and len(shown_probs) == len(LABELS)
    assert shown["label"] == (api["positives"] or [api["ranking"][0]["label"]])[0]

    # another label: another heatmap
    other = next(lab for lab in LABELS if lab != shown["label"])
    Select(browser.find_element("id", "label")).select_by_value(other)
    after = _wait(browser, f"return (() => {{ const r = (() => {{ {SHOWN} }})(); "
                           f"return r && r.label === {other!r} ? r : null; }})()")
    assert after["srcLength"] > 1000

    # a JPEG dropped on the zone (a drop event carrying the file, as a drag from the desktop does)
    jpeg = shared_data / MRI_IMAGE
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], arguments[1], {type: 'image/jpeg'}));
        document.getElementById('results').hidden = true;
        document.getElementById('upload').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true,
                                                                             cancelable: true}));
    """, base64.b64encode(jpeg.read_bytes()).decode("ascii"), jpeg.name)
    dropped = _wait(browser, f"return (() => {{ const r = (() => {{ {SHOWN} }})(); "
                             f"return r && r.file.startsWith({jpeg.name!r}) ? r : null; }})()")
    assert "JPEG" in dropped["file"] and dropped["label"]

    # nothing fetched from anywhere else, no console errors
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(r => r.name)")
    assert resources and all(r.startswith(server.url) for r in resources), resources
    severe = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe == [], severe
    if os.environ.get("MEDISTILL_SERVE_SCREENSHOT"):  # eyeball the page: MEDISTILL_SERVE_SCREENSHOT=out.png
        browser.save_screenshot(os.environ["MEDISTILL_SERVE_SCREENSHOT"])


@pytest.mark.browser
def test_page_shows_a_dicom_and_explains_a_refusal(browser, server, tmp_path):
    browser.get(server.url)
    _wait(browser, "return document.getElementById('model-name').textContent === 'tiny_cnn.onnx'")
    yy, xx = np.mgrid[0:200, 0:160]
    dcm = write_dicom(tmp_path / "study.dcm", (np.hypot(yy - 100, xx - 80) * 100).astype(np.uint16))
    _upload(browser, dcm)
    shown = _wait(browser, "return (" + "() => {" + SHOWN + "}" + ")()")
    assert "DICOM" in shown["file"] and (shown["width"], shown["height"]) == (160, 200) and shown["label"]

    fake = tmp_path / "notes.png"
    fake.write_text("not an image, whatever the name says\n")
    _upload(browser, fake)
    status = _wait(browser, "const s = document.getElementById('status'); "
                            "return s.classList.contains('error') ? s.textContent : null")
    assert "notes.png" in status and "not an image" in status and "415" in status


# --- load ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_load_many_concurrent_requests(server):
    """200 predictions, 16 in flight, on loopback: every one answered 200, none failed, bounded in time."""
    import httpx

    n, in_flight, budget_s = 200, 16, 240
    rng = np.random.default_rng(0)
    image = png_bytes((np.linspace(0, 200, 256)[None, :] + rng.normal(0, 20, (256, 256))).clip(0, 255)
                      .astype(np.uint8))
    results: list[tuple[int, float, dict]] = []
    errors: list[str] = []
    active = peak = 0

    async def main() -> float:
        nonlocal active, peak
        gate = asyncio.Semaphore(in_flight)
        limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            async def one(i: int) -> None:
                nonlocal active, peak
                async with gate:
                    active += 1
                    peak = max(peak, active)
                    start = time.perf_counter()
                    try:
                        r = await client.post("/api/predict", files={"file": (f"load{i}.png", image)})
                        results.append((r.status_code, (time.perf_counter() - start) * 1e3,
                                        r.json().get("timings_ms", {}) if r.status_code == 200 else r.json()))
                    except (httpx.HTTPError, ValueError) as e:
                        errors.append(f"{type(e).__name__}: {e}")
                    finally:
                        active -= 1

            began = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*[one(i) for i in range(n)]), timeout=budget_s)
            return time.perf_counter() - began

    wall = asyncio.run(main())
    statuses = [s for s, _, _ in results]
    assert errors == [] and statuses == [200] * n, (errors[:5], [r for r in results if r[0] != 200][:5])
    assert peak == in_flight
    lat = np.array([ms for _, ms, _ in results])
    queued = np.array([t["queued"] for _, _, t in results])
    model = np.array([t["inference"] for _, _, t in results])
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    summary = (f"load: {n} requests, {in_flight} in flight, {len(errors) + sum(s != 200 for s in statuses)} failed, "
               f"{wall:.1f} s, {n / wall:.1f} req/s; latency ms p50 {p50:.1f} p90 {p90:.1f} p99 {p99:.1f} max "
               f"{lat.max():.1f}; server queue ms p50 {np.median(queued):.1f} max {queued.max():.1f}; model ms p50 "
               f"{np.median(model):.2f}")
    print(summary)
    assert queued.max() > 0  # requests did wait for one of the 2 inference slots
    assert httpx.get(server.url + "healthz", timeout=10).status_code == 200
