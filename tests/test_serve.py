"""``medistill serve``'s application through FastAPI's TestClient: predictions on real images (NIH PNG, brain MRI
JPEG, a DICOM), the metadata, health and OpenAPI routes, every refusal with its status (413, 415, 422), the
decompression-bomb guard, bounded concurrency, the temporary folder, and serving without torch.

One tiny_cnn (64 px, grayscale, explain graph) is exported once per session; variants without maps or with a
softmax head are the same graph with its ONNX outputs / metadata edited (no second export).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imaging import png_header_only, write_dicom

REPO = Path(__file__).resolve().parents[1]
LABELS = ["Atelectasis", "Effusion", "Mass", "Nodule"]
THRESHOLDS = {"Effusion": 0.3, "Mass": 0.7}  # the others default to 0.5
SIZE = 64
LIMIT = 2 * 2**20  # max_upload_bytes of the test application
NIH_IMAGE = "nih-chestxray14-sample/images/00016082_000.png"
MRI_IMAGE = "brain-tumor-mri/Testing/glioma/Te-glTr_0000.jpg"
BASE = "http://localhost"  # a Host the application answers (the loopback names by default)


def export_tiny(folder: Path) -> Path:
    """tiny_cnn exported with its explain graph into ``folder`` (reused when it is already there)."""
    path = folder / "tiny_cnn.onnx"
    if path.is_file():
        return path
    import torch

    from medistill.export.onnx import export_onnx
    from medistill.models import create_model

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = create_model("tiny_cnn", num_classes=len(LABELS), in_chans=1, image_size=SIZE)
    return export_onnx(model, path, labels=LABELS, task="multilabel", thresholds=THRESHOLDS, explain=True)


def edited_model(src: Path, dst: Path, *, maps: bool = True, task: str | None = None) -> Path:
    """A copy of ``src`` without its ``cams`` output (``maps=False``) and/or with another task in its metadata."""
    import onnx

    from medistill.inference import seal_model_file

    model = onnx.load(str(src))
    props = {p.key: p for p in model.metadata_props}
    if not maps:
        keep = [o for o in model.graph.output if o.name != "cams"]
        del model.graph.output[:]
        model.graph.output.extend(keep)
        props["medistill.maps"].value = "0"
    if task:
        props["medistill.task"].value = task
    onnx.save(model, str(dst))
    seal_model_file(dst)  # the checksum made again, as the exporter makes it
    return dst


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.getbasetemp() / "serve-model")


@pytest.fixture(scope="module")
def client(model_path):
    from fastapi.testclient import TestClient

    from medistill.serve import create_app

    with TestClient(create_app(model_path, max_upload_bytes=LIMIT), base_url=BASE) as c:
        yield c


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def phantom_png(size: int = 96, seed: int = 0) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8))


def gradient_png(size: int) -> bytes:
    """A large image that compresses well (a few KB)."""
    ramp = np.linspace(0, 255, size).astype(np.uint8)
    return png_bytes(np.broadcast_to(ramp, (size, size)).copy())


def post(client, data: bytes, name: str = "image.png", **kwargs):
    return client.post("/api/predict", files={"file": (name, data, "application/octet-stream")}, **kwargs)


def check_prediction(body: dict, *, maps: bool = True) -> None:
    """The shape of a successful answer: every label, sorted ranking, positives by the stored thresholds."""
    assert list(body["probabilities"]) == LABELS
    probs = body["probabilities"]
    assert all(0.0 <= p <= 1.0 for p in probs.values())
    ranked = [s["probability"] for s in body["ranking"]]
    assert ranked == sorted(ranked, reverse=True) and sorted(s["label"] for s in body["ranking"]) == sorted(LABELS)
    expected_thr = {lab: THRESHOLDS.get(lab, 0.5) for lab in LABELS}
    assert body["thresholds"] == pytest.approx(expected_thr)
    if body["task"] == "multilabel":
        assert body["positives"] == [lab for lab in LABELS if probs[lab] >= expected_thr[lab]]
    assert [s["label"] for s in body["ranking"] if s["positive"]] == sorted(
        body["positives"], key=lambda lab: -probs[lab])
    assert body["latency_ms"] > 0 and body["timings_ms"]["total"] >= body["timings_ms"]["inference"]
    if maps:
        assert list(body["maps"]) == LABELS
        grids = np.array([body["maps"][lab] for lab in LABELS])  # (L, h, w)
        assert grids.shape == (len(LABELS), SIZE // 16, SIZE // 16)
        assert grids.min() >= 0.0 and grids.max() <= 1.0
        # tiny_cnn pools 2x2: its cells tile the image evenly (cell i centred on (i + 0.5) / 4 of the side)
        assert body["map_grid"] == {"stride": [0.25, 0.25], "offset": [0.125, 0.125]}
    else:
        assert body["maps"] is None and body["map_grid"] is None


def preview_image(body: dict) -> Image.Image:
    uri = body["image"]["preview"]
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


# --- predictions on real images -----------------------------------------------------------------------------------
@pytest.mark.data
def test_predict_nih_xray_matches_medistill_predict(client, model_path, shared_data):
    """An NIH chest X-ray PNG: the same probabilities and positives as the torch-free Predictor (``medistill
    predict``), maps of every label, and a preview of the decoded image."""
    from medistill.inference import Predictor

    path = shared_data / NIH_IMAGE
    r = post(client, path.read_bytes(), name="../../etc/" + path.name)
    assert r.status_code == 200, r.text
    body = r.json()
    check_prediction(body)
    assert body["file"] == path.name  # the base name only
    assert body["model"] == "tiny_cnn" and body["task"] == "multilabel"
    ref = next(Predictor(model_path).predict([path], maps=True))
    assert body["probabilities"] == pytest.approx(ref.probabilities, abs=1e-6)
    assert body["positives"] == ref.positives
    assert np.abs(np.array([body["maps"][lab] for lab in LABELS]) - ref.maps).max() <= 1e-4  # rounded to 4 places
    assert body["image"] == {**body["image"], "format": "png", "width": 256, "height": 256, "channels": 1}
    assert preview_image(body).size == (256, 256)


@pytest.mark.data
def test_predict_brain_mri_jpeg(client, shared_data):
    data = (shared_data / MRI_IMAGE).read_bytes()
    body = post(client, data, name="scan.jpg").json()
    check_prediction(body)
    assert body["image"]["format"] == "jpeg"
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
    assert (body["image"]["width"], body["image"]["height"]) == (w, h)
    assert max(preview_image(body).size) <= 512


def test_predict_dicom_and_16bit_png(client, tmp_path):
    ramp = (np.arange(80 * 120, dtype=np.float64).reshape(80, 120) * 6).astype(np.uint16)
    dcm = write_dicom(tmp_path / "a.dcm", ramp, photometric="MONOCHROME1")
    body = post(client, dcm.read_bytes(), name="no-extension").json()  # the type comes from the content
    check_prediction(body)
    assert body["image"] == {**body["image"], "format": "dicom", "width": 120, "height": 80}
    preview = np.asarray(preview_image(body))
    assert preview[0, 0] > preview[-1, -1]  # MONOCHROME1: low values shown bright
    body16 = post(client, png_bytes(ramp), name="ramp16.png").json()
    check_prediction(body16)


def test_part_without_file_name(client):
    """``curl -F 'file=<x.png'`` sends the image as a plain field (no filename): still an image by content."""
    r = client.post("/api/predict", files={"file": (None, phantom_png())})
    assert r.status_code == 200 and r.json()["file"] == "upload"


def test_preview_can_be_left_out(client):
    body = post(client, phantom_png(), params={"preview": "false"}).json()
    assert body["image"]["preview"] is None


def test_large_image_preview_is_bounded(client):
    body = post(client, gradient_png(1500)).json()
    assert body["image"]["width"] == 1500 and preview_image(body).size == (512, 512)


# --- metadata, health, schema, page ------------------------------------------------------------------------------
def test_model_metadata(client, model_path):
    import hashlib

    m = client.get("/api/model").json()
    assert m["name"] == model_path.name and m["model"] == "tiny_cnn" and m["task"] == "multilabel"
    assert m["uses_thresholds"] is True  # the Task's answer, which the page reads instead of the task's name
    assert m["labels"] == LABELS and m["thresholds"] == {lab: THRESHOLDS.get(lab, 0.5) for lab in LABELS}
    assert m["input"]["size"] == SIZE and m["input"]["channels"] == 1 and m["maps"] is True
    assert m["file_bytes"] == model_path.stat().st_size
    assert m["sha256"] == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert 10_000 < m["parameters"] < 100_000  # tiny_cnn: ~34k weights
    assert m["limits"] == {"max_upload_bytes": LIMIT, "max_pixels": 25_000_000, "max_concurrency": 2,
                           "read_timeout_s": 60.0, "min_upload_rate": 1024.0,
                           "accepted": ["dicom", "jpeg", "png"]}


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "model": "tiny_cnn.onnx"}


def test_openapi_documents_the_api(client):
    spec = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/model", "/healthz"} <= set(spec["paths"])
    op = spec["paths"]["/api/predict"]["post"]
    schema = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["file"] and schema["properties"]["file"]["format"] == "binary"
    assert {"200", "413", "415", "422"} <= set(op["responses"])
    assert "PredictResponse" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 404  # the interactive docs would load a CDN


def test_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js">' in r.text and 'type="file"' in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    import re

    for name in ("index.html", "app.js", "app.css"):
        text = client.get(f"/static/{name}").text
        assert text.strip() and not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), name


def test_page_draws_the_map_where_the_runtime_places_it(client, tmp_path):
    """The page's bilinear sampler (app.js ``sample``, run in Node) lays a map over the preview where
    ``medistill.inference.place_map`` lays it, for the even grid and an EfficientNet's (cell i centred on
    pixel 32 i at 128 px): drawn evenly, the page's heat would sit half a cell off the overlays of predict."""
    import re
    import shutil

    from medistill.cam_policy import Grid
    from medistill.inference import place_map

    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the page's sampler cannot be run")
    source = client.get("/static/app.js").text
    sample = re.search(r"^function sample\(.*?^}$", source, re.M | re.S).group(0)
    cam = np.random.default_rng(0).random((4, 4)).round(4)
    size = (48, 40)  # a non-square preview (H, W)
    for grid in (Grid.even((4, 4)), Grid((32, 32), (0, 0)).on_image((128, 128))):
        wire = {"stride": list(grid.stride), "offset": list(grid.offset)}
        script = (f"{sample}\nconst map = {json.dumps(cam.tolist())}, grid = {json.dumps(wire)}, out = [];\n"
                  f"for (let y = 0; y < {size[0]}; y++) {{ const row = []; for (let x = 0; x < {size[1]}; x++) "
                  f"row.push(sample(map, 4, 4, x, y, {size[1]}, {size[0]}, grid)); out.push(row); }}\n"
                  f"console.log(JSON.stringify(out));\n")
        (tmp_path / "sample.js").write_text(script)
        drawn = json.loads(subprocess.run([node, str(tmp_path / "sample.js")], capture_output=True, text=True,
                                          check=True, timeout=60).stdout)
        np.testing.assert_allclose(np.array(drawn), place_map(cam.astype(np.float32), size, grid), atol=1e-5)


# --- refusals ------------------------------------------------------------------------------------------------------
def test_upload_over_the_limit_is_413(client):
    big = os.urandom(LIMIT + 1024)
    r = post(client, big)
    assert r.status_code == 413 and r.json()["error"] == "upload_too_large"
    assert str(LIMIT) in r.json()["detail"]

    def chunks():  # no Content-Length: counted while it streams in
        yield b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(LIMIT // 2**16 + 2):
            yield b"\0" * 2**16

    r = client.post("/api/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413 and r.json()["error"] == "upload_too_large"


def test_not_an_image_by_content_is_415(client, tmp_path):
    r = post(client, b"name,label\nx,1\n", name="x.png")  # a text file named .png
    assert r.status_code == 415 and r.json()["error"] == "not_an_image"
    assert "not an image" in r.json()["detail"]
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="BMP")
    r = post(client, buf.getvalue(), name="x.png")  # an image, but not one of the accepted kinds
    assert r.status_code == 415 and "BMP" in r.json()["detail"]
    r = client.post("/api/predict", json={"file": "x.png"})
    assert r.status_code == 415 and r.json()["error"] == "not_multipart"


@pytest.mark.parametrize("case", ["missing", "empty", "truncated", "corrupt_dicom", "two_files", "malformed"])
def test_bad_uploads_are_422(client, tmp_path, case):
    png = phantom_png()
    if case == "missing":
        r = client.post("/api/predict", files={"image": ("a.png", png)})
    elif case == "empty":
        r = post(client, b"")
    elif case == "truncated":
        r = post(client, png[: len(png) // 2])
    elif case == "corrupt_dicom":
        dcm = write_dicom(tmp_path / "c.dcm", np.zeros((64, 64), np.uint16)).read_bytes()
        r = post(client, dcm[:-3000], name="c.dcm")
    elif case == "two_files":
        r = client.post("/api/predict", files=[("file", ("a.png", png)), ("file", ("b.png", png))])
    else:
        r = client.post("/api/predict", content=b"not multipart at all",
                        headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and body["detail"]
    expected = {"missing": "missing_file", "empty": "empty_file", "truncated": "undecodable_image",
                "corrupt_dicom": "undecodable_image", "two_files": "several_files", "malformed": "malformed_upload"}
    assert body["error"] == expected[case]


def test_a_decoded_but_unusable_image_is_422(client, monkeypatch):
    from medistill.data import images as im

    monkeypatch.setattr(im, "decode_reduced", lambda data, **kw: im.Decoded(np.zeros((0, 0), np.float32), 0, 0))
    r = post(client, phantom_png())
    assert r.status_code == 422 and r.json()["error"] == "unusable_image"


def test_other_errors_are_json(client):
    r = client.get("/api/nothing")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = client.get("/api/predict")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    r = post(client, phantom_png(), params={"preview": "perhaps"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request" and "preview" in r.json()["detail"]


def test_decompression_bombs_are_refused_before_decoding(client, tmp_path):
    # a header claiming 20000 x 20000 pixels
    r = post(client, png_header_only(tmp_path / "bomb.png", 20000, 20000).read_bytes())
    assert r.status_code == 413 and r.json()["error"] == "image_too_large"
    assert "pixels" in r.json()["detail"]
    # a real one: 6000 x 6000 black pixels (36 M) compress to a few tens of KB
    buf = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buf, format="PNG", compress_level=9)
    assert len(buf.getvalue()) < LIMIT // 10
    r = post(client, buf.getvalue())
    assert r.status_code == 413 and r.json()["error"] == "image_too_large"
    # a DICOM declaring 1000 frames of 256 x 256 (65 M pixels) with one frame of data
    from pydicom import dcmread

    path = write_dicom(tmp_path / "frames.dcm", np.zeros((256, 256), np.uint16))
    ds = dcmread(path)
    ds.NumberOfFrames = 1000
    ds.save_as(path)
    r = post(client, path.read_bytes())
    assert r.status_code == 413 and "1000 frames" in r.json()["detail"]


# --- models without maps, multiclass, bad models ------------------------------------------------------------------
def test_model_without_maps(model_path, tmp_path):
    from fastapi.testclient import TestClient

    from medistill.serve import create_app

    plain = edited_model(model_path, tmp_path / "plain.onnx", maps=False)
    with TestClient(create_app(plain), base_url=BASE) as c:
        assert c.get("/api/model").json()["maps"] is False
        check_prediction(post(c, phantom_png()).json(), maps=False)


def test_multiclass_model_calls_the_top_label_positive(model_path, tmp_path):
    from fastapi.testclient import TestClient

    from medistill.serve import create_app

    softmax = edited_model(model_path, tmp_path / "softmax.onnx", task="multiclass")
    with TestClient(create_app(softmax), base_url=BASE) as c:
        body = post(c, phantom_png()).json()
        assert c.get("/api/model").json()["uses_thresholds"] is False
    check_prediction(body)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["positives"] == [body["ranking"][0]["label"]]


def test_bad_model_and_settings_are_refused(model_path, tmp_path):
    from medistill.errors import MedistillError
    from medistill.inference import ModelFileError
    from medistill.serve import create_app

    (tmp_path / "x.onnx").write_text("not a model")
    with pytest.raises(ModelFileError, match="x.onnx"):
        create_app(tmp_path / "x.onnx")
    with pytest.raises(MedistillError, match="max_concurrency"):
        create_app(model_path, max_concurrency=0)
    r = subprocess.run([sys.executable, "-m", "medistill", "serve", str(tmp_path / "missing.onnx"), "--port", "0"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and "missing.onnx: model file not found" in r.stderr


def test_cli_binds_loopback_by_default():
    from medistill.cli import build_parser

    from medistill.cli.common import config_from_args
    from medistill.cli.serve import ServeOptions

    args = config_from_args(ServeOptions, build_parser().parse_args(["serve", "model.onnx"]))
    assert (args.host, args.port, args.max_concurrency) == ("127.0.0.1", 8000, 2)
    assert args.max_upload_mb * 2**20 == 32 * 2**20


# --- concurrency and the temporary folder ------------------------------------------------------------------------
def test_inference_concurrency_is_bounded(model_path, monkeypatch):
    """12 requests at once, max_concurrency=2: never more than 2 inferences at a time, all answered."""
    import httpx

    from medistill.serve import app as serve_app

    active, peak, lock = 0, 0, threading.Lock()
    original = serve_app.ServedModel.predict

    def slow_predict(self, *args, **kwargs):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            time.sleep(0.05)
            return original(self, *args, **kwargs)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(serve_app.ServedModel, "predict", slow_predict)
    app = serve_app.create_app(model_path, max_concurrency=2)
    png = phantom_png()

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            return await asyncio.gather(*[c.post("/api/predict", files={"file": ("a.png", png)}) for _ in range(12)])

    try:
        responses = asyncio.run(main())
    finally:
        app.state.served.close()  # no lifespan under ASGITransport: remove the temporary folder here
    assert [r.status_code for r in responses] == [200] * 12
    assert peak == 2
    assert max(r.json()["timings_ms"]["queued"] for r in responses) >= 40  # some waited for a slot


def test_temporary_folder_holds_spooled_uploads_and_is_removed(model_path, tmp_path, monkeypatch):
    """An upload over 1 MiB is spooled into the application's temporary folder (and nowhere else), deleted
    after its request, and the folder is removed at shutdown."""
    import tempfile

    from fastapi.testclient import TestClient

    from medistill.serve import app as serve_app

    system_tmp = tmp_path / "tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    seen: list[list[str]] = []
    original = serve_app.ServedModel.predict

    def spying_predict(self, *args, **kwargs):
        seen.append(sorted(p.name for p in self.spool_dir.iterdir()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(serve_app.ServedModel, "predict", spying_predict)
    big = png_bytes(np.random.default_rng(1).integers(0, 256, (1100, 1100), dtype=np.uint8))
    assert serve_app.SPOOL_BYTES < len(big) < LIMIT
    app = serve_app.create_app(model_path, max_upload_bytes=LIMIT)
    served = app.state.served
    with TestClient(app, base_url=BASE) as c:
        spool = served.spool_dir
        assert spool.parent == system_tmp and spool.name.startswith("medistill-serve-")
        assert post(c, big).status_code == 200
        assert post(c, phantom_png()).status_code == 200  # small: kept in memory
        assert post(c, os.urandom(LIMIT + 10)).status_code == 413
        assert post(c, b"x" * (serve_app.SPOOL_BYTES + 10), name="x.png").status_code == 415
        assert len(seen) == 2 and len(seen[0]) == 1 and seen[1] == []  # the big upload was spooled here
        assert list(spool.iterdir()) == []  # and deleted after its request
        assert list(system_tmp.iterdir()) == [spool]  # nothing else written to the temp folder
    assert not spool.exists() and list(system_tmp.iterdir()) == []
    assert served._tmp is None  # closed: a later spool_dir makes a new folder


# --- torch-free ----------------------------------------------------------------------------------------------------
def test_serving_does_not_need_torch(model_path, tmp_path):
    """The application imported, built and used in a process where ``import torch`` fails."""
    image = tmp_path / "x.png"
    image.write_bytes(phantom_png())
    code = f"""
import json, sys
sys.modules["torch"] = None  # import torch raises ImportError
from fastapi.testclient import TestClient
from medistill.serve import create_app
import medistill.cli.serve
with TestClient(create_app({str(model_path)!r}), base_url="http://127.0.0.1") as c:
    r = c.post("/api/predict", files={{"file": ("x.png", open({str(image)!r}, "rb").read())}})
    m = c.get("/api/model")
loaded = sorted(n for n in sys.modules if n.split(".")[0] in ("torch", "torchvision", "timm"))
print(json.dumps({{"status": r.status_code, "maps": r.json().get("maps") is not None, "model": m.status_code,
                   "loaded": loaded}}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"status": 200, "maps": True, "model": 200, "loaded": ["torch"]}  # "torch" is the None blocker


# --- Host check, log escaping, memory per upload ------------------------------------------------------------------
def test_host_header_is_checked(model_path):
    """Only the bound host names are answered (DNS rebinding): another site's name gets 400 JSON with the security
    headers; --allow-host adds names; a wildcard bind answers IP addresses but not names."""
    from fastapi.testclient import TestClient

    from medistill.cli import build_parser
    from medistill.serve import create_app
    from medistill.serve.guards import allowed_hosts_for

    with TestClient(create_app(model_path)) as c:  # default: the loopback names
        for host in ("localhost", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST."):
            assert c.get("/healthz", headers={"host": host}).status_code == 200, host
        r = c.get("/healthz", headers={"host": "attacker.example:8000"})
        assert r.status_code == 400 and r.json()["error"] == "host_not_allowed"
        assert "attacker.example" in r.json()["detail"] and "--allow-host" in r.json()["detail"]
        assert r.headers["x-content-type-options"] == "nosniff" and "default-src" in r.headers["content-security-policy"]
        assert c.post("/api/predict", files={"file": ("a.png", phantom_png())},
                      headers={"host": "rebound.example"}).status_code == 400
    assert set(allowed_hosts_for("127.0.0.1")) == {"127.0.0.1", "localhost", "[::1]"}
    assert allowed_hosts_for("127.0.0.1", ["xray.lan"])[-1] == "xray.lan"
    with TestClient(create_app(model_path, allowed_hosts=allowed_hosts_for("0.0.0.0", ["xray.lan"]))) as c:
        assert [c.get("/healthz", headers={"host": h}).status_code for h in
                ("192.168.1.20:8000", "[fe80::1]", "xray.lan", "localhost", "evil.example")] == [200] * 4 + [400]
    from medistill.cli.common import config_from_args
    from medistill.cli.serve import ServeOptions

    args = config_from_args(ServeOptions, build_parser().parse_args(["serve", "m.onnx", "--allow-host", "a.lan",
                                                                     "--allow-host", "b.lan"]))
    assert args.allow_host == ["a.lan", "b.lan"]


def test_upload_names_are_escaped_in_the_log(client, caplog):
    """NUL, terminal escape codes, line separators and bidi overrides in a file name never reach the log as they
    are (a CR or LF cannot be in it: the multipart header would be malformed, 422)."""
    name = "x\x1b[31mred\x1b[0m\x00\u2028FAKE LOG LINE\u202egnp.png"
    body = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="' + name.encode("utf-8") +
            b'"\r\n\r\n' + phantom_png() + b"\r\n--xyz--\r\n")
    with caplog.at_level("INFO", logger="medistill"):
        ok = client.post("/api/predict", content=body, headers={"content-type": "multipart/form-data; boundary=xyz"})
        bad = client.post("/api/predict", content=body.replace(phantom_png(), b"text"),
                          headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert ok.status_code == 200 and bad.status_code == 415
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "\\x1b[31mred" in logged and "\\x00" in logged and "\\u202e" in logged
    for raw in ("\x1b", "\x00", "\u2028", "\u202e"):
        assert raw not in logged
    assert ok.json()["file"] == bad.json()["detail"].split(":")[0] == "x\\x1b[31mred\\x1b[0m\\x00\\u2028FAKE LOG " \
                                                                       "LINE\\u202egnp.png"


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from /proc (Linux)")
def test_memory_per_upload_is_bounded(model_path, tmp_path):
    """A 97 KB 5000 x 5000 RGBA PNG of zeros (within the pixel limit) is reduced on load: the request's peak memory
    (growth of VmHWM, the peak resident memory of a fresh process: ru_maxrss would carry this process's peak over
    the fork) stays under 2 x its 8-bit image (200 MB); it was 1.2 GB when the image
    was converted to float at full size."""
    from PIL import Image

    png = tmp_path / "zeros.png"
    Image.new("RGBA", (5000, 5000)).save(png, optimize=True)
    code = f"""
import json, time
from pathlib import Path
from medistill.serve.app import Upload, create_app
served = create_app({str(model_path)!r}).state.served
data = Path({str(png)!r}).read_bytes()
class Part:  # a python-multipart Field: the upload in memory
    value, file_name, field_name = data, b"zeros.png", b"file"
def hwm_kib():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
before = hwm_kib()
now = time.perf_counter()
out = served.predict(Upload(Part()), "png", preview=True, started=now, queued_at=now)
growth = (hwm_kib() - before) / 1024
print(json.dumps({{"growth_mib": growth, "image": out["image"]["width"], "preview": out["image"]["preview"][:22]}}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"5000x5000 RGBA PNG ({png.stat().st_size} bytes): peak memory growth {out['growth_mib']:.0f} MiB")
    assert out["image"] == 5000 and out["preview"] == "data:image/png;base64,"
    assert out["growth_mib"] < 2 * 5000 * 5000 * 4 / 2**20 + 30  # two 8-bit RGBA images (PIL's reduce premultiplies
    # alpha in a copy) and small float copies; see the README


def test_a_colour_photo_to_a_gray_xray_model_is_warned(model_path, tmp_path):
    """Issue 15, item 10: training statistics stored at export (grayscale images, mean intensity about 0.5) make the
    answer and the page warn about a colour photograph and about an almost black image, not about a similar one."""
    import json

    import onnx
    from fastapi.testclient import TestClient

    from medistill.inference import input_statistics, seal_model_file
    from medistill.serve import create_app

    rng = np.random.default_rng(0)
    train = [{"colour": False, "mean": float(m), "std": float(s)}
             for m, s in zip(rng.normal(0.5, 0.05, 64), rng.normal(0.25, 0.03, 64))]
    model = onnx.load(str(model_path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "medistill.input_stats", json.dumps(input_statistics(train))
    path = tmp_path / "with-stats.onnx"
    onnx.save(model, str(path))
    seal_model_file(path)
    photo = np.stack([rng.integers(150, 256, (96, 96)), rng.integers(0, 100, (96, 96)),
                      rng.integers(0, 60, (96, 96))], axis=-1).astype(np.uint8)  # a reddish colour photograph
    with TestClient(create_app(path), base_url=BASE) as c:
        assert c.get("/api/model").json()["input"]["training_stats"]["colour_share"] == 0.0
        colour = post(c, png_bytes(photo), name="skin.png").json()
        dark = post(c, png_bytes(np.full((96, 96), 3, np.uint8)), name="black.png").json()
        ramp = np.broadcast_to(np.linspace(20, 235, 96), (96, 96))  # mean 0.5, contrast 0.24 as the training set
        alike = post(c, png_bytes(ramp.astype(np.uint8))).json()
        page = c.get("/").text + c.get("/static/app.js").text
    check_prediction(colour)
    assert any("colour image" in w and "grayscale" in w for w in colour["warnings"])
    assert any("mean intensity" in w for w in dark["warnings"])
    assert alike["warnings"] == []
    assert 'id="input-warnings"' in page and "r.warnings" in page


def test_answers_say_nothing_without_training_statistics(client):
    assert post(client, phantom_png()).json()["warnings"] == []


def test_a_garbage_compressed_dicom_leaves_one_line_in_the_log(client, caplog, tmp_path):
    """The server log holds medistill's one line for a garbage JPEG 2000 DICOM, not pydicom's ERROR and traceback
    (issue 37, item 9)."""
    from pydicom.uid import JPEG2000Lossless
    from test_bad_inputs import compressed_dicom

    data = compressed_dicom(tmp_path / "j2k.dcm", JPEG2000Lossless).read_bytes()
    with caplog.at_level("DEBUG"):
        r = post(client, data, name="j2k.dcm")
    assert r.status_code == 422 and "JPEG 2000" in r.json()["detail"]
    assert [rec.name for rec in caplog.records if rec.name.startswith("pydicom")] == []
    assert not [rec for rec in caplog.records if rec.exc_info]
    import logging

    assert logging.getLogger("pydicom").level == logging.WARNING  # pydicom's own level, restored after decoding
