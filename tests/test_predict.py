"""``medistill predict`` / ``medistill.inference.Predictor``: bad inputs never stop a batch, models are validated,
and the device preprocesses exactly like training."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medistill.cli import main
from medistill.inference import ModelFileError, Predictor
from imaging import write_dicom, png_header_only

SIZE = 64
LABELS = ["Cardiomegaly", "Effusion", "Nodule"]


# --- fixtures ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tiny_cnn (1 channel, 64 px, random weights) exported with maps, without maps, and its PyTorch model."""
    import torch

    from medistill.export.onnx import export_onnx
    from medistill.models import create_model

    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = create_model("tiny_cnn", num_classes=len(LABELS), in_chans=1, image_size=SIZE).eval()
    thr = {"Cardiomegaly": 0.0, "Effusion": 1.0, "Nodule": 0.5}  # always / never / sometimes positive
    out = {"explain": export_onnx(model, d / "explain.onnx", labels=LABELS, task="multilabel", thresholds=thr,
                                  explain=True),
           "plain": export_onnx(model, d / "plain.onnx", labels=LABELS, task="multilabel", thresholds=thr)}
    torch.save(model.state_dict(), d / "state.pt")
    return out


def _edit_metadata(src: Path, dst: Path, *, seal: bool = True, **changes: str | None) -> Path:
    """A copy of ``src`` with medistill.<key> metadata set (or removed when None), its checksum made again as the
    exporter makes it (``seal``; a tamperer who knows the format can), so that the fields themselves are tested."""
    import onnx

    from medistill.inference import seal_model_file

    m = onnx.load(str(src))
    props = {e.key: e.value for e in m.metadata_props}
    for k, v in changes.items():
        if v is None:
            props.pop(f"medistill.{k}", None)
        else:
            props[f"medistill.{k}"] = v
    del m.metadata_props[:]
    for k, v in props.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.save_model(m, str(dst))
    if seal:
        seal_model_file(dst)
    return dst


def _xray(seed: int = 0, size: int = 80) -> np.ndarray:
    """A smooth gray test image in [0, 1], (size, size)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(seed)
    return np.clip(0.5 + 0.3 * np.sin(6 * xx + seed) * np.cos(4 * yy) + 0.05 * rng.standard_normal((size, size)), 0, 1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    g = _xray()
    f: dict[str, Path] = {}
    f["gray"] = d / "gray.png"
    Image.fromarray((g * 255).astype(np.uint8)).save(f["gray"])
    f["gray16"] = d / "gray16.png"
    Image.fromarray((g * 65535).astype(np.uint16)).save(f["gray16"])
    f["jpeg"] = d / "colour.jpg"
    Image.fromarray((np.stack([g, g * 0.9, g * 0.8], -1) * 255).astype(np.uint8)).save(f["jpeg"], quality=95)
    rgba = np.dstack([(g * 255).astype(np.uint8)] * 3 + [np.full(g.shape, 200, np.uint8)])
    f["rgba"] = d / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(f["rgba"])
    f["palette"] = d / "palette.png"
    Image.fromarray((g * 255).astype(np.uint8)).convert("P").save(f["palette"])
    f["truncated"] = d / "truncated.png"
    f["truncated"].write_bytes(f["gray"].read_bytes()[:200])
    f["empty"] = d / "empty.png"
    f["empty"].write_bytes(b"")
    f["text"] = d / "notes.png"
    f["text"].write_text("not an image at all\n")
    f["huge"] = png_header_only(d / "huge.png", 20000, 20000)
    px = (g * 4000).astype(np.uint16)
    f["mono1"] = write_dicom(d / "mono1.dcm", px, photometric="MONOCHROME1")
    # the MONOCHROME2 twin of a MONOCHROME1 image is (2^BitsStored - 1) - p (BitsStored 16; issue 15, item 1)
    f["mono2_inverse"] = write_dicom(d / "mono2.dcm", (65535 - px.astype(np.int32)).astype(np.uint16))
    f["nopixels"] = write_dicom(d / "nopixels.dcm", px, pixel_data=False)
    return f


# --- prediction -------------------------------------------------------------------------------------------

def test_probabilities_match_pytorch_on_the_same_input(models, inputs):
    import torch

    from medistill.data import images as im
    from medistill.models import create_model

    pred = Predictor(models["plain"])
    model = create_model("tiny_cnn", num_classes=len(LABELS), in_chans=1, image_size=SIZE).eval()
    model.load_state_dict(torch.load(models["plain"].parent / "state.pt", weights_only=True))
    x = pred.preprocess(im.read_image(inputs["gray"]))
    with torch.no_grad():
        ref = torch.sigmoid(model(torch.from_numpy(x[None]))).numpy()[0]
    (p,) = list(pred.predict([inputs["gray"]]))
    assert np.allclose([p.probabilities[lab] for lab in LABELS], ref, atol=1e-5)
    assert "Cardiomegaly" in p.positives and "Effusion" not in p.positives  # thresholds 0.0 and 1.0


def test_device_preprocessing_equals_training(phantom_root: Path):
    """The predictor's input for a phantom image equals the training dataset's sample for it."""
    from medistill.data import Preprocess, build_dataset
    from medistill.data import images as im
    from medistill.config import DataConfig

    pre = Preprocess(48, 1, (0.449,), (0.226,), "none")
    ds = build_dataset(DataConfig(dataset="phantom", root=str(phantom_root), image_size=48, cache=False), "val", pre)
    for i in (0, 1):
        sample = ds[i]["image"].numpy()
        mine = im.preprocess(im.read_image(ds.path(i)), 48, 1, (0.449,), (0.226,))
        assert np.allclose(sample, mine, atol=1e-6)


def test_one_bad_file_never_stops_the_batch(models, inputs, capsys):
    order = ["gray", "truncated", "gray16", "empty", "text", "huge", "jpeg", "rgba", "palette", "mono1",
             "nopixels", "gray"]
    rc = main(["predict", str(models["plain"]), *[str(inputs[k]) for k in order], "--json", "--batch-size", "2"])
    rows = json.loads(capsys.readouterr().out)
    assert rc == 1  # some inputs failed
    assert [r["file"] for r in rows] == [str(inputs[k]) for k in order]
    by = dict(zip(order[:-1], rows[:-1]))
    for ok in ("gray", "gray16", "jpeg", "rgba", "palette", "mono1"):
        assert set(by[ok]["probabilities"]) == set(LABELS), ok
        assert all(0.0 <= v <= 1.0 for v in by[ok]["probabilities"].values())
        assert "error" not in by[ok]
    assert "truncated" in by["truncated"]["error"] or "corrupt" in by["truncated"]["error"]
    assert "empty" in by["empty"]["error"]
    assert "not an image" in by["text"]["error"]
    assert "20000x20000" in by["huge"]["error"] or "bomb" in by["huge"]["error"]
    assert "no pixel data" in by["nopixels"]["error"]
    assert rows[-1]["probabilities"] == rows[0]["probabilities"]  # the batch went on after the failures


def test_huge_image_is_refused_from_its_header(models, inputs):
    pred = Predictor(models["plain"])
    t0 = time.perf_counter()
    (p,) = list(pred.predict([inputs["huge"]]))
    assert p.error is not None and time.perf_counter() - t0 < 2.0  # never decoded (400M pixels would take long)


def test_monochrome1_dicom_is_inverted(models, inputs):
    """MONOCHROME1 pixels p predict exactly like MONOCHROME2 pixels (max - p)."""
    pred = Predictor(models["plain"])
    a, b = list(pred.predict([inputs["mono1"], inputs["mono2_inverse"]]))
    assert a.error is None and b.error is None
    assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)


def test_sixteen_bit_png_predicts_like_eight_bit(models, inputs):
    pred = Predictor(models["plain"])
    a, b = list(pred.predict([inputs["gray"], inputs["gray16"]]))
    assert a.probabilities == pytest.approx(b.probabilities, abs=0.02)


def test_folders_are_expanded(models, inputs, capsys, tmp_path):
    for k in ("gray", "jpeg"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        (tmp_path / "sub" / inputs[k].name).write_bytes(inputs[k].read_bytes())
    rc = main(["predict", str(models["plain"]), str(tmp_path), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(rows) == 2 and all("probabilities" in r for r in rows)


def test_explain_writes_overlays(models, inputs, tmp_path, capsys):
    out = tmp_path / "maps"
    rc = main(["predict", str(models["explain"]), str(inputs["gray"]), str(inputs["text"]), "--json", "--explain",
               "--out", str(out), "--maps", "all"])
    rows = json.loads(capsys.readouterr().out)
    assert rc == 1 and "error" in rows[1]
    written = sorted(out.glob("*.png"))
    assert len(written) == len(LABELS) and [Path(p) for p in rows[0]["overlays"]] == written
    with Image.open(written[0]) as img:
        assert img.mode == "RGB" and img.size == (80, 80)  # the input image's own size


def test_explain_with_a_model_without_maps_warns(models, inputs, tmp_path, capsys):
    rc = main(["predict", str(models["plain"]), str(inputs["gray"]), "--explain", "--out", str(tmp_path / "m")])
    captured = capsys.readouterr()
    assert rc == 0 and "has no maps" in captured.err and not (tmp_path / "m").exists()


def test_maps_come_back_per_image(models, inputs):
    pred = Predictor(models["explain"])
    assert pred.has_maps and pred.info.maps
    p, q = list(pred.predict([inputs["gray"], inputs["jpeg"]], maps=True, batch_size=2))
    assert p.maps.shape == (len(LABELS), SIZE // 16, SIZE // 16)
    assert 0.0 <= p.maps.min() and p.maps.max() <= 1.0
    plain = list(Predictor(models["plain"]).predict([inputs["gray"]]))[0]
    assert plain.probabilities == pytest.approx(p.probabilities, abs=1e-6)


# --- model files ------------------------------------------------------------------------------------------

def test_a_file_that_is_not_onnx_is_a_clear_error(inputs, tmp_path, capsys):
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        Predictor(inputs["gray"])
    with pytest.raises(ModelFileError, match="empty"):
        Predictor(inputs["empty"])
    with pytest.raises(ModelFileError, match="not found"):
        Predictor(tmp_path / "missing.onnx")
    rc = main(["predict", str(inputs["text"]), str(inputs["gray"]), "--json"])
    captured = capsys.readouterr()
    assert rc == 2 and "not a loadable ONNX model" in captured.err and "Traceback" not in captured.err


def test_onnx_without_medistill_metadata_is_refused(models, tmp_path):
    import onnx

    m = onnx.load(str(models["plain"]))
    del m.metadata_props[:]
    onnx.save_model(m, str(tmp_path / "bare.onnx"))
    with pytest.raises(ModelFileError, match="without medistill metadata"):
        Predictor(tmp_path / "bare.onnx")


def test_metadata_that_contradicts_the_graph_is_refused(models, tmp_path):
    bad = _edit_metadata(models["plain"], tmp_path / "rgb.onnx", input_channels="3", mean="[0.5, 0.5, 0.5]",
                         std="[0.2, 0.2, 0.2]")
    with pytest.raises(ModelFileError, match="1 channels on axis 1 but its metadata says 3"):
        Predictor(bad)
    few = _edit_metadata(models["plain"], tmp_path / "labels.onnx", labels='["a", "b"]',
                         thresholds='{"a": 0.5, "b": 0.5}')
    with pytest.raises(ModelFileError, match="3 scores but the metadata names 2 labels"):
        Predictor(few)
    broken = _edit_metadata(models["plain"], tmp_path / "json.onnx", labels="[not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        Predictor(broken)
    nolabels = _edit_metadata(models["plain"], tmp_path / "nolabels.onnx", labels=None)
    with pytest.raises(ModelFileError, match="lacks medistill.labels"):
        Predictor(nolabels)


def test_multiclass_models_predict_the_most_probable_label(models, inputs, tmp_path):
    mc = _edit_metadata(models["plain"], tmp_path / "mc.onnx", task="multiclass")
    (p,) = list(Predictor(mc).predict([inputs["gray"]]))
    assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert p.positives == [max(p.probabilities, key=p.probabilities.get)]


def test_symlink_loops_in_a_folder_are_reported(models, inputs, capsys, caplog, tmp_path):
    """A symlink loop named like an image is reported as a failed input (exit 1) and a folder symlink that loops
    back is named in a warning, instead of both being skipped unseen."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ok.png").write_bytes(inputs["gray"].read_bytes())
    (tmp_path / "sub" / "loop.png").symlink_to("loop.png")
    (tmp_path / "sub" / "up").symlink_to("..")
    with caplog.at_level("WARNING", logger="medistill"):
        rc = main(["predict", str(models["plain"]), str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 1 and "ok.png: positives" in out
    assert f"{tmp_path / 'sub' / 'loop.png'}: error: is a symlink loop" in err
    assert any(str(tmp_path / "sub" / "up") in r.getMessage() and "symlink loop" in r.getMessage()
               for r in caplog.records)


def test_onnx_runtime_writes_nothing_under_home(models, tmp_path):
    """ONNX Runtime's telemetry writes ~/.cache/Microsoft/DeveloperTools/.onnxruntime/{deviceid,onnxruntime.db} when
    it is imported; medistill turns it off (ORT_DISABLE_TELEMETRY=1) before importing it."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    code = f"from medistill.inference import Predictor; Predictor({str(models['plain'])!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [str(p.relative_to(home)) for p in home.rglob("*")] == []


def test_same_pixels_as_png_and_dicom_predict_the_same(models, tmp_path):
    """Issue 15, item 1: an 8-bit image (pixels 1 .. 243) as PNG and as DICOM (BitsStored 8, no window) gets the
    same probabilities; a model file without medistill.intensity (exported before the rule) keeps the old min-max
    rule, which differs."""
    from PIL import Image

    px = np.random.default_rng(3).integers(1, 244, (64, 64)).astype(np.uint8)
    px[0, :2] = (1, 243)
    Image.fromarray(px).save(tmp_path / "x.png")

    def eight_bits(ds):
        ds.BitsStored, ds.HighBit = 8, 7

    dcm = write_dicom(tmp_path / "x.dcm", px.astype(np.uint16), extra=eight_bits)
    pred = Predictor(models["plain"])
    assert pred.info.intensity == "voi-window-else-bit-depth"
    a, b = pred.predict([tmp_path / "x.png", dcm])
    assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
    legacy = Predictor(_edit_metadata(models["plain"], tmp_path / "legacy.onnx", intensity=None))
    assert legacy.info.intensity == "voi-window-else-minmax"
    c, d = legacy.predict([tmp_path / "x.png", dcm])
    assert c.probabilities == pytest.approx(a.probabilities, abs=1e-6)  # PNG: no rule change
    assert d.probabilities != pytest.approx(b.probabilities, abs=1e-6)  # DICOM: the old stretch


# --- tampered or corrupt model files (issue 37, item 3) ------------------------------------------------------------
THREE = '{"Cardiomegaly": 0.0, "Effusion": 1.0, "Nodule": 0.5}'


@pytest.mark.parametrize("field, value, expected", [
    ("thresholds", '{"Cardiomegaly": "NaN", "Effusion": 1.0, "Nodule": 0.5}', "Cardiomegaly: expected a number in "
                                                                               "[0, 1], got 'NaN'"),
    ("thresholds", '{"Cardiomegaly": NaN, "Effusion": 1.0, "Nodule": 0.5}', "Cardiomegaly: expected a number in "
                                                                             "[0, 1], got nan"),
    ("thresholds", '{"Cardiomegaly": 1.5, "Effusion": 1.0, "Nodule": 0.5}', "expected a number in [0, 1], got 1.5"),
    ("thresholds", '{"Cardiomegaly": true, "Effusion": 1.0, "Nodule": 0.5}', "expected a number in [0, 1], got True"),
    ("thresholds", '{"Cardiomegaly": 0.5}', "no threshold for Effusion, Nodule"),
    ("thresholds", '{"Cardiomegaly": 0.5, "Effusion": 1.0, "Nodule": 0.5, "Mass": 0.5}', "a threshold for Mass, "
                                                                                          "which is not a label"),
    ("labels", '["Cardiomegaly", "Cardiomegaly", "Nodule"]', "Cardiomegaly is named twice"),
    ("labels", '["Cardiomegaly", 5, "Nodule"]', "expected a list of label names (strings), got 5"),
    ("labels", '["Cardiomegaly", "", "Nodule"]', "an empty label name"),
    ("mean", "[0.5, 0.5]", "2 values for 1 input channels"),
    ("mean", "[Infinity]", "expected finite numbers, got inf"),
    ("mean", '["x"]', "expected finite numbers, got 'x'"),
    ("std", "[0.0]", "expected positive finite numbers, got 0.0"),
    ("std", "[-0.2]", "expected positive finite numbers, got -0.2"),
    ("input_size", "0", "expected an integer from 1 to"),
    ("input_size", "64.5", "expected an integer from 1 to"),
    ("input_size", "100000", "expected an integer from 1 to"),
    ("maps", "yes", "expected 0 or 1, got 'yes'"),
    ("format", "2", "format 2, this medistill reads format 1"),
    ("input_stats", '{"colour_share": "x"}', "expected the training images' input statistics"),
    ("input_stats", '{"images": 4, "colour_share": 0.0, "mean": {"mean": NaN, "std": 0.1}}',
     "expected the training images' input statistics"),
    ("cam_grid", "[0.125, 0.0]", "medistill.cam_grid should be a JSON dict, got [0.125, 0.0]"),
    ("cam_grid", '{"stride": [0.125, 0.125]}', "expected {stride: [y, x], offset: [y, x]}, got the keys ['stride']"),
    ("cam_grid", '{"stride": [0.125], "offset": [0, 0]}', "stride: expected two numbers [y, x], got [0.125]"),
    ("cam_grid", '{"stride": [0, 0.125], "offset": [0, 0]}', "stride: expected finite numbers in (0, 1], got 0"),
    ("cam_grid", '{"stride": [0.125, 2], "offset": [0, 0]}', "stride: expected finite numbers in (0, 1], got 2"),
    ("cam_grid", '{"stride": [0.125, 0.125], "offset": [NaN, 0]}', "offset: expected finite numbers in [-1, 1], "
                                                                    "got nan"),
    ("cam_grid", '{"stride": [0.125, 0.125], "offset": [true, 0]}', "offset: expected finite numbers in [-1, 1], "
                                                                     "got True"),
    ("cam_grid", '{"stride": [0.125, 0.125], "offset": [0, -3]}', "offset: expected finite numbers in [-1, 1], "
                                                                   "got -3"),
])
def test_every_metadata_field_is_validated(models, tmp_path, field, value, expected):
    """A tampered field is refused in one line naming the file, the field and what was expected (before: a NaN
    threshold made a label never positive, a huge input size or a zero std was used as it was)."""
    bad = _edit_metadata(models["plain"], tmp_path / "bad.onnx", **{field: value})
    with pytest.raises(ModelFileError) as e:
        Predictor(bad)
    message = str(e.value)
    assert message.startswith(f"{bad}: medistill.{field}") and "\n" not in message, message
    assert expected in message, message


def test_a_nan_threshold_is_refused_by_the_cli_in_one_line(models, inputs, tmp_path, capsys):
    bad = _edit_metadata(models["plain"], tmp_path / "nan.onnx", thresholds='{"Cardiomegaly": "NaN", "Effusion": '
                                                                            '1.0, "Nodule": 0.5}')
    capsys.readouterr()
    assert main(["predict", str(bad), str(inputs["gray"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"medistill predict: error: {bad}: medistill.thresholds")


def test_an_edit_of_the_file_after_export_is_refused_by_its_checksum(models, tmp_path):
    """The exporter stores a SHA-256 of the file in it (``medistill.sha256``): a metadata edit (here a NaN
    threshold that is itself valid JSON) without making the checksum again is refused as a changed file."""
    edited = _edit_metadata(models["plain"], tmp_path / "edited.onnx", seal=False, thresholds=THREE.replace("0.5", "0.4"))
    with pytest.raises(ModelFileError, match=r"does not match the SHA-256 stored in it \(medistill.sha256\)"):
        Predictor(edited)


@pytest.mark.parametrize("seed", range(12))
def test_flipped_bytes_are_refused_in_one_line(models, inputs, tmp_path, seed):
    """50 bytes flipped in the second half of the file (weights or metadata): refused with a ModelFileError naming
    the file (before: a UnicodeDecodeError traceback, or, for half of the seeds, predictions from damaged weights
    without a word)."""
    data = bytearray(models["plain"].read_bytes())
    rng = np.random.default_rng(seed)
    for i in rng.choice(np.arange(len(data) // 2, len(data)), 50, replace=False):
        data[i] ^= 0xFF
    bad = tmp_path / "flipped.onnx"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError) as e:
        Predictor(bad)
    assert str(e.value).startswith(f"{bad}: ") and "\n" not in str(e.value)


def test_a_model_exported_before_checksums_is_still_read(models, tmp_path):
    old = _edit_metadata(models["plain"], tmp_path / "old.onnx", seal=False, sha256=None)
    assert Predictor(old).labels == LABELS


# --- terminal injection (issue 37, item 2) -------------------------------------------------------------------------
EVIL_NAMES = ["a\nFAKE: positives [Nothing]\x1b[31mX.png", "b\rFAKE.png", "c\x1b]0;owned\x07.png",
              "d\u202egnp.exe.png"]
#: what a terminal acts on: C0 / C1 controls (ESC, BEL, CR, ...) and bidirectional overrides
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _evil_folder(root: Path) -> Path:
    folder = root / "in"
    folder.mkdir()
    for name in EVIL_NAMES:
        Image.fromarray((_xray() * 255).astype(np.uint8)).save(folder / name, format="PNG")
    (folder / "e\x1b[2Jbroken.png").write_text("not an image")  # an error line names it too
    return folder


def test_file_names_cannot_forge_lines_or_reach_the_terminal(models, tmp_path, capsys):
    """A file named ``a\\nFAKE: positives [Nothing]\\x1b[31mX.png`` printed a forged result line and raw escape
    sequences; every name is now escaped (``\\n``, ``\\x1b``, ``\\u202e``), and each output line is one input's."""
    folder = _evil_folder(tmp_path)
    capsys.readouterr()
    assert main(["predict", str(models["plain"]), str(folder)]) == 1  # the broken file fails
    out, err = capsys.readouterr()
    assert not CONTROL.search(out) and not CONTROL.search(err), (out, err)
    lines = out.splitlines() + err.splitlines()
    assert len(out.splitlines()) == len(EVIL_NAMES) and len(err.splitlines()) == 1
    assert all(line.startswith(str(folder) + "/") for line in lines), lines
    assert not any(line.startswith("FAKE") for line in lines)
    assert f"{folder}/a\\nFAKE: positives [Nothing]\\x1b[31mX.png: positives [" in out
    assert "d\\u202egnp.exe.png" in out and "e\\x1b[2Jbroken.png: error: " in err


def test_label_names_from_a_model_are_escaped(models, inputs, tmp_path, capsys):
    labels = ["Cardio\x1b[2Jmegaly", "Effusion\r", "Nodule"]
    evil = _edit_metadata(models["plain"], tmp_path / "evil.onnx", labels=json.dumps(labels),
                          thresholds=json.dumps({lab: 0.0 for lab in labels}))
    capsys.readouterr()
    assert main(["predict", str(evil), str(inputs["gray"])]) == 0
    out = capsys.readouterr().out
    assert not CONTROL.search(out) and "Cardio\\x1b[2Jmegaly" in out and "Effusion\\r" in out


def test_names_are_escaped_in_the_log(models, tmp_path):
    """The log (``-vv`` on stderr) names each input: escaped there too."""
    import os
    import subprocess
    import sys

    folder = _evil_folder(tmp_path)
    r = subprocess.run([sys.executable, "-m", "medistill", "-vv", "predict", str(models["plain"]), str(folder)],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert r.returncode == 1, r.stderr[-2000:]
    assert "DEBUG medistill.inference" in r.stderr and "e\\x1b[2Jbroken.png" in r.stderr
    assert not CONTROL.search(r.stderr) and not CONTROL.search(r.stdout)


# --- pydicom's own log (issue 37, item 9) --------------------------------------------------------------------------
def test_a_garbage_compressed_dicom_is_one_line_without_pydicoms_traceback(models, inputs, tmp_path):
    """pydicom logs its own ERROR with a traceback when a JPEG 2000 fragment is garbage; only medistill's one line
    (which carries pydicom's reason) reaches stderr."""
    import os
    import subprocess
    import sys

    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless
    from test_bad_inputs import compressed_dicom

    j2k = compressed_dicom(tmp_path / "j2k.dcm", JPEG2000Lossless)
    jls = compressed_dicom(tmp_path / "jls.dcm", JPEGLSLossless)
    r = subprocess.run([sys.executable, "-m", "medistill", "predict", str(models["plain"]), str(j2k), str(jls),
                        str(inputs["gray"])], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "pydicom." not in r.stderr, r.stderr
    assert r.stderr.splitlines() == [
        f"{j2k}: error: DICOM pixel data cannot be decoded (transfer syntax JPEG 2000 Image Compression (Lossless "
        f"Only)): Unable to decode as exceptions were raised by all available plugins: pillow: cannot identify "
        f"image file", f"{jls}: error: " + r.stderr.splitlines()[1].split(": error: ", 1)[1]]
    assert len(r.stdout.splitlines()) == 1  # the good image is still predicted
