"""The bad-input corpus: every broken or unusual input a user can hand medistill, with its exact outcome.

A module fixture writes the corpus into one folder (``bad-inputs/{images,dicom,tables,configs,models}``), generated
rather than committed. Each entry is either *handled* (the test checks the values medistill produces) or *rejected*
with a :class:`~medistill.errors.MedistillError` whose message names the input and says what was expected.
``test_corpus_is_complete`` checks that every file of the folder has exactly one expectation (so the count in the
closing note is the number of inputs really tried).

Then property-based tests (hypothesis): random and mutated bytes only ever raise ``ImageReadError``; random valid
images of every mode, format and size decode to float32 in [0, 1] with the right shape and values; random
NIH-style tables give a valid ``Table`` or a ``DatasetError``, never another exception.

Last, resource limits: the decoded-image cache has a stated size on disk (N * C * S * S bytes, memory-mapped) and
building a dataset decodes nothing. (The web server's upload-size and concurrency bounds are tested with the server,
in tests/test_serve.py.)
"""

from __future__ import annotations

import io
import os
import re
import struct
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from medistill.config import ConfigError, RunConfig, build
from medistill.data import DatasetError
from medistill.data.cache import ImageCache
from medistill.data.images import ImageReadError, ImageTooLargeError, decode_image, read_image
from medistill.data.nih import LABELS as NIH_LABELS
from medistill.data.nih import NIHChestXray14
from medistill.errors import MedistillError
from medistill.inference import ModelFileError, ModelInfo, Predictor
from imaging import write_dicom

# ---------------------------------------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(path: Path, width: int, height: int, *, real_data: bool) -> Path:
    """A 1-bit PNG claiming ``width`` x ``height``: with ``real_data`` a complete, valid zlib stream of zero rows
    (a real decompression bomb, a few kB on disk), else a header and a token IDAT (the first bytes of one)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    if real_data:
        comp = zlib.compressobj(9)
        row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
        idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    else:
        idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))
    return path


def compressed_dicom(path: Path, transfer_syntax: str) -> Path:
    """A DICOM whose transfer syntax is compressed (JPEG 2000, JPEG-LS ...) with garbage in its one fragment."""
    from pydicom import dcmread
    from pydicom.encaps import encapsulate

    write_dicom(path, np.zeros((8, 8), np.uint16))
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.PixelData = encapsulate([b"not a compressed codestream at all"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


NIH_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
              "View Position"]


def nih_root(root: Path, rows: list[tuple[Any, Any, Any, Any]], *, columns: list[str] | None = None,
             images: bool = True) -> Path:
    """``root/Data_Entry_2017.csv`` with ``rows`` (image, findings, patient, view) and tiny PNGs in images/."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame([{"Image Index": i, "Finding Labels": f, "Follow-up #": 0, "Patient ID": p, "Patient Age": 50,
                        "Patient Gender": "F", "View Position": v} for i, f, p, v in rows], columns=NIH_HEADER)
    if columns is not None:
        df = df[columns]
    df.to_csv(root / "Data_Entry_2017.csv", index=False)
    if images:
        for name in {str(r[0]) for r in rows}:
            Image.fromarray(np.full((8, 8), 100, np.uint8)).save(root / "images" / name)
    return root


def nih_rows(n: int = 12) -> list[tuple[str, str, str, str]]:
    finds = ["No Finding", "Effusion", "Mass|Nodule", "Hernia", "Atelectasis|Cardiomegaly", "Edema"]
    return [(f"{k:08d}_000.png", finds[k % len(finds)], f"p{k // 2}", "PA") for k in range(n)]


def tiny_onnx(path: Path, *, labels: list[str], channels: int = 1, size: int = 16, graph_channels: int | None = None,
              logits: int | None = None, metadata: bool = True) -> Path:
    """An ONNX model: input (B, C, S, S) -> mean over pixels -> (B, C) @ W -> logits (B, L), with medistill
    metadata saying ``labels`` / ``channels`` (the graph may disagree through ``graph_channels`` / ``logits``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    gc, n = graph_channels or channels, logits or len(labels)
    w = numpy_helper.from_array(np.linspace(-2, 2, gc * n, dtype=np.float32).reshape(gc, n), "W")
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                            ["batch", gc, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n])],
                              initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if metadata:
        info = ModelInfo(labels=list(labels), task="multilabel", size=size, channels=channels, mean=[0.5] * channels,
                         std=[0.25] * channels, thresholds={lab: 0.5 for lab in labels}, model="tiny", version="test")
        helper.set_model_props(model, info.to_props())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# ---------------------------------------------------------------------------------------------------------
# the corpus
# ---------------------------------------------------------------------------------------------------------

class Corpus:
    def __init__(self, root: Path):
        self.root = root
        self.paths: dict[str, Path] = {}
        self.expected: dict[str, Any] = {}

    def add(self, key: str, path: Path, expected: Any = None) -> Path:
        assert key not in self.paths, key
        self.paths[key] = path
        self.expected[key] = expected
        return path

    def __getitem__(self, key: str) -> Path:
        return self.paths[key]


def _jpeg_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    from pydicom.dataelem import DataElement
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

    c = Corpus(tmp_path_factory.mktemp("bad-inputs"))
    for sub in ("images", "dicom", "tables", "configs", "models"):
        (c.root / sub).mkdir()
    rng = np.random.default_rng(0)
    img_dir, dcm_dir, tab_dir, cfg_dir, mod_dir = (c.root / s for s in ("images", "dicom", "tables", "configs",
                                                                        "models"))

    # --- images --------------------------------------------------------------------------------------
    noise = (rng.random((48, 40)) * 255).astype(np.uint8)
    c.add("zero_byte.png", img_dir / "zero_byte.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    c.add("truncated.png", img_dir / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    jpeg = _jpeg_bytes(noise)
    c.add("truncated.jpg", img_dir / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    c.add("jpeg_named.png", img_dir / "jpeg_named.png", expected=jpeg).write_bytes(jpeg)
    c.add("text_named.png", img_dir / "text_named.png").write_text("patient list\nid,name\n1,anon\n")
    px16 = np.array([[0, 1, 1000, 40000, 65535]], dtype=np.uint16)
    Image.fromarray(px16).save(c.add("gray16.png", img_dir / "gray16.png", expected=px16))
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, [[255, 0], [128, 255]]
    Image.fromarray(rgba, "RGBA").save(c.add("rgba.png", img_dir / "rgba.png"))
    pal = Image.new("P", (3, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255, 10, 20, 30] + [0] * 759)
    for x in range(3):
        pal.putpixel((x, 0), x)
    pal.save(c.add("palette.png", img_dir / "palette.png"))
    png_bomb(c.add("header_20000x20000.png", img_dir / "header_20000x20000.png"), 20000, 20000, real_data=False)
    png_bomb(c.add("bomb_9000x9000.png", img_dir / "bomb_9000x9000.png"), 9000, 9000, real_data=True)
    Image.new("L", (1, 1), 77).save(c.add("one_pixel.png", img_dir / "one_pixel.png"))
    Image.new("L", (4, 4), 9).save(c.add("animation.gif", img_dir / "animation.gif"), format="GIF")
    c.add("folder.png", img_dir / "folder.png").mkdir()
    cmyk = Image.new("CMYK", (4, 3), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(c.add("cmyk.jpg", img_dir / "cmyk.jpg"), format="JPEG", quality=100)
    f32 = np.array([[0.0, 1.0, np.nan], [2.0, np.inf, 3.0]], np.float32)
    Image.fromarray(f32).save(c.add("float_nan.tif", img_dir / "float_nan.tif"), format="TIFF")
    hu = np.array([[-1000, -500, 0], [400, 1000, 3000]], np.int32)  # CT Hounsfield units, signed 32-bit
    Image.fromarray(hu).save(c.add("ct_signed32.tif", img_dir / "ct_signed32.tif", expected=hu), format="TIFF")
    good_png = buf.getvalue()
    bad_crc = bytearray(good_png)
    bad_crc[29] ^= 0xFF  # inside IHDR's CRC
    c.add("bad_crc.png", img_dir / "bad_crc.png").write_bytes(bytes(bad_crc))

    # --- DICOM ---------------------------------------------------------------------------------------
    ramp = (np.arange(12).reshape(3, 4) * 100).astype(np.uint16)
    write_dicom(c.add("monochrome1.dcm", dcm_dir / "monochrome1.dcm", expected=ramp), ramp, photometric="MONOCHROME1")
    write_dicom(c.add("no_pixel_data.dcm", dcm_dir / "no_pixel_data.dcm"), ramp, pixel_data=False)
    compressed_dicom(c.add("jpeg2000_garbage.dcm", dcm_dir / "jpeg2000_garbage.dcm"), JPEG2000Lossless)
    compressed_dicom(c.add("jpegls_garbage.dcm", dcm_dir / "jpegls_garbage.dcm"), JPEGLSLossless)
    big = write_dicom(dcm_dir / ".full.dcm", (rng.random((64, 64)) * 4000).astype(np.uint16))
    data = big.read_bytes()
    big.unlink()
    c.add("truncated.dcm", dcm_dir / "truncated.dcm").write_bytes(data[: len(data) // 2])

    def huge(ds: Any) -> None:
        ds.Rows, ds.Columns = 20000, 20000

    write_dicom(c.add("header_20000x20000.dcm", dcm_dir / "header_20000x20000.dcm"), ramp, extra=huge)

    def bad_slope(ds: Any) -> None:
        ds[0x00281053] = DataElement(0x00281053, "LO", "two")  # RescaleSlope that is not a number

    write_dicom(c.add("bad_slope.dcm", dcm_dir / "bad_slope.dcm"), ramp, extra=bad_slope)

    def nan_intercept(ds: Any) -> None:
        with warnings.catch_warnings():  # pydicom warns that "nan" is not a valid DS: that is the point
            warnings.simplefilter("ignore")
            ds[0x00281052] = DataElement(0x00281052, "DS", "nan")

    write_dicom(c.add("nan_intercept.dcm", dcm_dir / "nan_intercept.dcm"), ramp, extra=nan_intercept)
    c.add("text_named.dcm", dcm_dir / "text_named.dcm").write_text("this is a radiology report, not an image\n" * 8)
    stack = np.stack([ramp, ramp * 2, ramp * 3]).astype(np.uint16)
    write_dicom(c.add("multiframe.dcm", dcm_dir / "multiframe.dcm", expected=stack), stack, frames=3)

    # --- tables (NIH ChestX-ray14 layout: a root per case) ---------------------------------------------
    nih_root(c.add("missing_column", tab_dir / "missing_column"), nih_rows(),
             columns=["Image Index", "Finding Labels", "View Position"])
    nih_root(c.add("unknown_label_requested", tab_dir / "unknown_label_requested"), nih_rows())
    rows = nih_rows()
    rows[3] = (rows[3][0], "Effusion|Covid-19", rows[3][2], "PA")
    nih_root(c.add("unknown_finding_in_table", tab_dir / "unknown_finding_in_table"), rows)
    rows = nih_rows()
    rows[2] = (rows[2][0], float("nan"), rows[2][2], "PA")
    nih_root(c.add("nan_findings", tab_dir / "nan_findings"), rows)
    rows = nih_rows()
    rows.append((rows[4][0], "Hernia", "p99", "AP"))  # the same image listed twice, with other labels
    nih_root(c.add("duplicated_ids", tab_dir / "duplicated_ids"), rows)
    root = nih_root(c.add("empty_train_split", tab_dir / "empty_train_split"), nih_rows())
    (root / "train_val_list.txt").write_text("")
    (root / "test_list.txt").write_text("\n".join(r[0] for r in nih_rows()) + "\n")
    nih_root(c.add("header_only", tab_dir / "header_only"), [])
    root = c.add("binary_table", tab_dir / "binary_table")
    root.mkdir()
    (root / "Data_Entry_2017.csv").write_bytes(bytes(rng.integers(0, 256, 4096, dtype=np.uint8)))
    root = c.add("phantom_nan_label", tab_dir / "phantom_nan_label")
    from medistill.data.phantom import generate
    generate(root, num_images=12, size=16, seed=0)
    lab = pd.read_csv(root / "labels.csv", dtype=str)
    lab.loc[0, "Effusion"] = ""
    lab.loc[1, "Nodule"] = "2"
    (root / "labels.csv").write_text(lab.to_csv(index=False))

    # --- configs -------------------------------------------------------------------------------------
    for key, text in {"unknown_key.yaml": "train:\n  epochz: 3\n",
                      "unknown_section.yaml": "trainer:\n  epochs: 3\n",
                      "wrong_type.yaml": "train:\n  epochs: ten\n",
                      "bool_for_int.yaml": "train:\n  batch_size: true\n",
                      "out_of_range.yaml": "train:\n  lr: -0.1\n",
                      "bad_choice.yaml": "model:\n  in_chans: 2\n",
                      "section_not_mapping.yaml": "train: 5\n",
                      "top_level_list.yaml": "- train\n- epochs\n",
                      "invalid_syntax.yaml": "train:\n  epochs: [3\n"}.items():
        c.add(key, cfg_dir / key).write_text(text)

    # --- models --------------------------------------------------------------------------------------
    three = ["Effusion", "Nodule", "Mass"]
    tiny_onnx(c.add("label_count_mismatch.onnx", mod_dir / "label_count_mismatch.onnx"), labels=three, logits=2)
    tiny_onnx(c.add("channels_mismatch.onnx", mod_dir / "channels_mismatch.onnx"), labels=three, channels=1,
              graph_channels=3)
    tiny_onnx(c.add("no_metadata.onnx", mod_dir / "no_metadata.onnx"), labels=three, metadata=False)
    good = tiny_onnx(mod_dir / ".good.onnx", labels=three).read_bytes()
    c.add("truncated.onnx", mod_dir / "truncated.onnx").write_bytes(good[: len(good) // 2])
    c.add("empty.onnx", mod_dir / "empty.onnx").write_bytes(b"")
    c.add("png_named.onnx", mod_dir / "png_named.onnx").write_bytes(good_png)
    import torch  # noqa: F401 - the two checkpoints below need it

    from medistill.models import create_model, save_weights
    save_weights(create_model("tiny_cnn", num_classes=6, in_chans=1),
                 c.add("six_labels.safetensors", mod_dir / "six_labels.safetensors"))
    save_weights(create_model("tiny_cnn", num_classes=14, in_chans=3),
                 c.add("rgb_input.safetensors", mod_dir / "rgb_input.safetensors"))
    (mod_dir / ".good.onnx").unlink()
    return c


# ---------------------------------------------------------------------------------------------------------
# expectations
# ---------------------------------------------------------------------------------------------------------

#: image and DICOM files refused by read_image: the message is "<path>: <this>"
IMAGE_REFUSED = {
    "zero_byte.png": r"empty file \(0 bytes\), expected a PNG, JPEG or DICOM image",
    "truncated.png": r"cannot be decoded, the file is truncated or corrupt",
    "truncated.jpg": r"cannot be decoded, the file is truncated or corrupt \(image file is truncated",
    "text_named.png": r"not an image: expected PNG, JPEG, BMP, TIFF or DICOM content",
    "header_20000x20000.png": r"refused as a decompression bomb",
    "bomb_9000x9000.png": r"image is 9000x9000 = 81000000 pixels, more than the limit of 64000000",
    "animation.gif": r"not an image: expected PNG, JPEG, BMP, TIFF or DICOM content",
    "folder.png": r"is a folder, expected an image file",
    "float_nan.tif": r"float pixel values include NaN or infinity \(2 pixels\); expected finite intensities",
    "bad_crc.png": r"cannot be decoded, the file is truncated or corrupt \(cannot identify image file\)",
    "no_pixel_data.dcm": r"DICOM file has no pixel data \(PixelData element missing\)",
    "jpeg2000_garbage.dcm": r"DICOM pixel data cannot be decoded \(transfer syntax JPEG 2000 Image Compression "
                            r"\(Lossless Only\)\)",
    "jpegls_garbage.dcm": r"DICOM pixel data cannot be decoded \(transfer syntax JPEG-LS Lossless Image "
                          r"Compression\): .*missing dependencies",
    "truncated.dcm": r"DICOM pixel data cannot be decoded \(transfer syntax Explicit VR Little Endian\): The number "
                     r"of bytes of pixel data is less than expected",
    "header_20000x20000.dcm": r"DICOM image is 20000x20000, more than the limit of 64000000 pixels",
    "bad_slope.dcm": r"DICOM header has an invalid Rows, Columns, RescaleSlope or RescaleIntercept "
                     r"\(could not convert string to float: 'two'\); expected numbers",
    "nan_intercept.dcm": r"DICOM pixel values are not finite after rescaling \(RescaleSlope 1.0, RescaleIntercept "
                         r"nan\); expected finite numbers",
    "text_named.dcm": r"not DICOM content \(no 'DICM' marker and no pixel data\); expected a DICOM image",
}
TOO_LARGE = {"header_20000x20000.png", "bomb_9000x9000.png", "header_20000x20000.dcm"}
IMAGE_HANDLED = {"jpeg_named.png", "gray16.png", "rgba.png", "palette.png", "one_pixel.png", "cmyk.jpg",
                 "ct_signed32.tif", "monochrome1.dcm", "multiframe.dcm"}
TABLE_CASES = {"missing_column", "unknown_label_requested", "unknown_finding_in_table", "nan_findings",
               "duplicated_ids", "empty_train_split", "header_only", "binary_table", "phantom_nan_label"}
CONFIG_REFUSED = {
    "unknown_key.yaml": r"unknown config key 'train.epochz'; valid keys of train: amp, batch_size, .*warmup_epochs",
    "unknown_section.yaml": r"unknown config key 'trainer'; valid keys: data, distill, model, out, recipe, train",
    "wrong_type.yaml": r"train.epochs: got 'ten', expected an integer",
    "bool_for_int.yaml": r"train.batch_size: got True, expected an integer",
    "out_of_range.yaml": r"train: lr: got -0.1, expected a value in \(0.0, 10.0\]",
    "bad_choice.yaml": r"model: in_chans: got 2, expected one of \[1, 3\]",
    "section_not_mapping.yaml": r"train: got 5, expected a mapping of TrainConfig fields",
    "top_level_list.yaml": r"expected a mapping at the top level, got list",
    "invalid_syntax.yaml": r"is not valid YAML",
}
ONNX_REFUSED = {
    "label_count_mismatch.onnx": r"'logits' has 2 scores but the metadata names 3 labels",
    "channels_mismatch.onnx": r"the graph's input has 3 channels on axis 1 but its metadata says 1; "
                              r"shape \['batch', 3, 16, 16\], expected \(batch, 1, 16, 16\)",
    "no_metadata.onnx": r"an ONNX model without medistill metadata \(no medistill.format key in metadata_props\)",
    "truncated.onnx": r"not a loadable ONNX model",
    "empty.onnx": r"empty file \(0 bytes\), expected an ONNX model",
    "png_named.onnx": r"not a loadable ONNX model",
}
CHECKPOINT_REFUSED = {"six_labels.safetensors", "rgb_input.safetensors"}


def test_corpus_is_complete(corpus: Corpus):
    """Every input of the folder has exactly one expectation below; at least 25 inputs in all."""
    on_disk = {p.relative_to(corpus.root).parts[1] for p in corpus.root.glob("*/*") if not p.name.startswith(".")}
    expected = (set(IMAGE_REFUSED) | IMAGE_HANDLED | TABLE_CASES | set(CONFIG_REFUSED) | set(ONNX_REFUSED)
                | CHECKPOINT_REFUSED)
    assert on_disk == set(corpus.paths) == expected
    sizes = [len(IMAGE_REFUSED), len(IMAGE_HANDLED), len(TABLE_CASES), len(CONFIG_REFUSED), len(ONNX_REFUSED),
             len(CHECKPOINT_REFUSED)]
    assert sum(sizes) == len(expected) >= 25  # no name is in two groups


# --- images and DICOM: refused --------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(IMAGE_REFUSED))
def test_image_refused_with_reason(corpus: Corpus, name: str, monkeypatch):
    from PIL import ImageFile

    def no_decoding(self: Any) -> None:
        raise AssertionError("pixels were decoded")

    if name in TOO_LARGE:  # refused from the header alone: decoding the pixels would fail the test
        monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    path = corpus[name]
    with pytest.raises(ImageReadError) as e:
        read_image(path)
    assert str(e.value).startswith(f"{path}: "), str(e.value)
    assert re.search(IMAGE_REFUSED[name], e.value.reason), e.value.reason
    assert isinstance(e.value, MedistillError) and isinstance(e.value, ImageTooLargeError) == (name in TOO_LARGE)
    assert "\n" not in str(e.value) and not re.search(r"0x[0-9a-f]{6,}", str(e.value))  # one line, no addresses


def test_bombs_are_small_files(corpus: Corpus):
    assert corpus["bomb_9000x9000.png"].stat().st_size < 50_000  # 81 Mpx from a few kB: a real bomb
    assert corpus["header_20000x20000.png"].stat().st_size < 1_000


# --- images and DICOM: handled --------------------------------------------------------------------------

def test_jpeg_named_png_is_decoded_by_content(corpus: Corpus):
    img = read_image(corpus["jpeg_named.png"])
    ref = np.asarray(Image.open(io.BytesIO(corpus.expected["jpeg_named.png"])), np.float32) / 255.0
    assert img.shape == (48, 40) and img.dtype == np.float32
    np.testing.assert_array_equal(img, ref)


def test_16bit_png_keeps_its_depth(corpus: Corpus):
    img = read_image(corpus["gray16.png"])
    np.testing.assert_allclose(img, corpus.expected["gray16.png"] / 65535.0, atol=1e-7)
    assert 0 < img[0, 1] < 1e-4  # 1/65535, not crushed to 0 by an 8-bit conversion


def test_rgba_is_composited_onto_black(corpus: Corpus):
    img = read_image(corpus["rgba.png"])
    assert img.shape == (2, 2)  # gray content stays one channel
    np.testing.assert_allclose(img, [[200 / 255, 0.0], [200 / 255 * 128 / 255, 200 / 255]], atol=1e-6)


def test_palette_is_expanded(corpus: Corpus):
    img = read_image(corpus["palette.png"])
    assert img.shape == (1, 3, 3)
    np.testing.assert_allclose(img[0], [[1, 0, 0], [0, 0, 1], [10 / 255, 20 / 255, 30 / 255]], atol=1e-6)


def test_one_pixel_image(corpus: Corpus):
    img = read_image(corpus["one_pixel.png"])
    assert img.shape == (1, 1) and img[0, 0] == pytest.approx(77 / 255)


def test_cmyk_jpeg_becomes_rgb(corpus: Corpus):
    img = read_image(corpus["cmyk.jpg"])
    assert img.shape == (3, 4, 3)
    np.testing.assert_allclose(img.mean(axis=(0, 1)), [1, 0, 0], atol=0.02)


def test_signed_ct_tiff_is_scaled_by_its_range(corpus: Corpus):
    hu = corpus.expected["ct_signed32.tif"].astype(np.float32)
    img = read_image(corpus["ct_signed32.tif"])
    np.testing.assert_allclose(img, (hu + 1000) / 4000, atol=1e-6)  # -1000 HU (air) -> 0, 3000 HU -> 1


def test_monochrome1_is_inverted(corpus: Corpus):
    img = read_image(corpus["monochrome1.dcm"])
    # no VOI window: the range its BitsStored (16) allows, never the image's own min-max (issue 15, item 1)
    np.testing.assert_allclose(img, 1.0 - corpus.expected["monochrome1.dcm"] / 65535.0, atol=1e-6)
    assert img[0, 0] == 1.0 and img[-1, -1] < img[0, 0]  # stored 0 is white in MONOCHROME1


def test_multiframe_dicom_gives_its_first_frame(corpus: Corpus):
    img = read_image(corpus["multiframe.dcm"])
    assert img.shape == (3, 4)
    np.testing.assert_allclose(img, corpus.expected["multiframe.dcm"][0] / 65535.0, atol=1e-6)


# --- tables ------------------------------------------------------------------------------------------------

def _nih_table(root: Path, **options: Any):
    return NIHChestXray14.load_table(root, **options)


def test_table_missing_column(corpus: Corpus):
    root = corpus["missing_column"]
    with pytest.raises(DatasetError, match=re.escape(f"{root / 'Data_Entry_2017.csv'}: missing columns "
                                                     f"['Patient ID']; expected columns ['Image Index', "
                                                     f"'Finding Labels', 'Patient ID']")):
        _nih_table(root)


def test_table_unknown_label_requested(corpus: Corpus):
    with pytest.raises(DatasetError, match=r"nih: unknown label 'Pneumonitis'; valid labels: Atelectasis, "
                                           r"Cardiomegaly, .*Hernia"):
        _nih_table(corpus["unknown_label_requested"], labels=("Effusion", "Pneumonitis"))


def test_table_unknown_finding_is_ignored_and_reported(corpus: Corpus):
    t = _nih_table(corpus["unknown_finding_in_table"])
    assert t.report["unknown_findings"] == {"Covid-19": 1}
    row = int(np.flatnonzero(t.records["image_id"] == "00000003_000.png")[0])
    assert t.targets[row].tolist() == [float(lab == "Effusion") for lab in NIH_LABELS]  # the known finding kept
    assert t.mask[row].tolist() == [1.0] * 14


def test_table_nan_findings_are_masked_not_negative(corpus: Corpus):
    t = _nih_table(corpus["nan_findings"])
    row = int(np.flatnonzero(t.records["image_id"] == "00000002_000.png")[0])
    assert t.mask[row].tolist() == [0.0] * 14  # unknown labels: no loss, no metric for this image
    assert t.targets[row].tolist() == [0.0] * 14
    assert t.mask.sum() == 14 * 11 and t.report["missing_findings"] == 1
    assert "unknown_findings" not in t.report  # "nan" is not a finding name


def test_table_duplicated_ids(corpus: Corpus):
    root = corpus["duplicated_ids"]
    with pytest.raises(DatasetError, match=re.escape(f"{root / 'Data_Entry_2017.csv'}: 1 image listed more than "
                                                     f"once, e.g. ['00000004_000.png']; expected one row per "
                                                     f"image")):
        _nih_table(root)


def test_table_empty_split(corpus: Corpus):
    root = corpus["empty_train_split"]
    assert len(NIHChestXray14(root, "test")) == 12
    with pytest.raises(DatasetError, match=re.escape(f"nih dataset at {root}: the 'train' split is empty "
                                                     f"(images per split: {{'test': 12}})")):
        NIHChestXray14(root, "train")


def test_table_header_only(corpus: Corpus):
    root = corpus["header_only"]
    with pytest.raises(DatasetError, match=re.escape(f"nih dataset at {root}: the 'train' split is empty "
                                                     f"(images per split: {{}})")):
        NIHChestXray14(root, "train")


def test_table_binary_garbage(corpus: Corpus):
    root = corpus["binary_table"]
    with pytest.raises(DatasetError, match=re.escape(f"{root / 'Data_Entry_2017.csv'}: ")
                       + r"(cannot be read as a CSV table|missing columns)"):
        _nih_table(root)


def test_phantom_labels_with_blank_and_invalid_cells(corpus: Corpus):
    from medistill.data.phantom import Phantom

    root = corpus["phantom_nan_label"]
    t = Phantom.load_table(root)
    k_eff, k_nod = t.labels.index("Effusion"), t.labels.index("Nodule")
    assert t.mask[0, k_eff] == 0 and t.targets[0, k_eff] == 0  # blank: unknown, masked out
    assert t.mask[1, k_nod] == 0 and t.targets[1, k_nod] == 0  # "2" is not a 0/1 label: masked out
    assert np.isfinite(t.targets).all() and t.mask.sum() == t.mask.size - 2
    assert t.report["invalid_labels"] == {"Effusion": 1, "Nodule": 1}


# --- configs -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CONFIG_REFUSED))
def test_config_refused_naming_file_and_key(corpus: Corpus, name: str):
    path = corpus[name]
    with pytest.raises(ConfigError) as e:
        build(RunConfig, file=path)
    msg = str(e.value)
    assert msg.startswith(f"config file {str(path)!r}") or msg.startswith(f"{path}: "), msg
    assert re.search(CONFIG_REFUSED[name], msg), msg


def test_config_error_from_a_flag_is_not_blamed_on_the_file(tmp_path: Path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("train:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as e:
        build(RunConfig, file=ok, overrides={"train.lr": "-1"})
    assert str(e.value) == "train: lr: got -1.0, expected a value in (0.0, 10.0]"
    assert build(RunConfig, file=ok, overrides={"train.lr": "0.01"}).train.epochs == 3


# --- models ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ONNX_REFUSED))
def test_onnx_refused_naming_file(corpus: Corpus, name: str):
    path = corpus[name]
    with pytest.raises(ModelFileError) as e:
        Predictor(path)
    assert str(e.value).startswith(f"{path}: "), str(e.value)
    assert re.search(ONNX_REFUSED[name], str(e.value)), str(e.value)


def test_checkpoint_with_other_label_count_or_channels(corpus: Corpus):
    from medistill.models import ModelError, create_model, load_weights

    model = create_model("tiny_cnn", num_classes=14, in_chans=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for name, shapes in (("six_labels.safetensors", r"file \(6,\) vs model \(14,\)"),
                         ("rgb_input.safetensors", r"file \(\d+, 3, \d+, \d+\) vs model \(\d+, 1, \d+, \d+\)")):
        with pytest.raises(ModelError) as e:
            load_weights(model, corpus[name], strict=False)
        msg = str(e.value)
        assert msg.startswith(f"{corpus[name]} does not fit "), msg
        assert msg.endswith("another architecture, label count or input channels?") and re.search(shapes, msg), msg
    assert all(v.equal(before[k]) for k, v in model.state_dict().items())  # a refused file changes nothing


def test_predict_cli_reports_each_bad_image_and_predicts_the_rest(corpus: Corpus, tmp_path: Path, capsys):
    """``medistill predict`` over the whole image and DICOM corpus: one line per file, no traceback, exit 1."""
    import json

    from medistill.cli import main

    model = tiny_onnx(tmp_path / "good.onnx", labels=["Effusion", "Nodule", "Mass"])
    code = main(["predict", str(model), str(corpus.root / "images"), str(corpus.root / "dicom"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    by_name = {Path(r["file"]).name: r for r in out}
    listed = {n for n in set(IMAGE_REFUSED) | IMAGE_HANDLED if Path(n).suffix in (".png", ".jpg", ".tif", ".dcm")
              and n != "folder.png"}
    assert set(by_name) == listed
    for name, row in by_name.items():
        if name in IMAGE_REFUSED:
            assert re.search(IMAGE_REFUSED[name], row["error"]), (name, row)
        else:
            assert set(row["probabilities"]) == {"Effusion", "Nodule", "Mass"}, (name, row)
            assert all(0 <= p <= 1 for p in row["probabilities"].values())


# ---------------------------------------------------------------------------------------------------------
# property-based tests
# ---------------------------------------------------------------------------------------------------------

PROPS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"\x00" * 128 + b"DICM"]


def _check_decoded(out: np.ndarray) -> None:
    assert out.dtype == np.float32 and out.ndim in (2, 3) and (out.ndim == 2 or out.shape[2] == 3)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


@PROPS
@given(prefix=st.sampled_from(MAGIC), body=st.binary(max_size=1024), name=st.sampled_from(["x.png", "x.dcm", "x"]))
def test_random_bytes_only_raise_image_read_error(prefix: bytes, body: bytes, name: str):
    try:
        out = decode_image(prefix + body, name=name, max_pixels=1_000_000)
    except ImageReadError:
        return
    _check_decoded(out)


def _samples() -> list[bytes]:
    rng = np.random.default_rng(1)
    out = []
    for fmt, mode in (("PNG", "L"), ("PNG", "RGB"), ("PNG", "I;16"), ("JPEG", "L"), ("BMP", "RGB"), ("TIFF", "F")):
        arr = rng.random((12, 10)) * (65535 if mode == "I;16" else 255)
        if mode == "RGB":
            arr = rng.random((12, 10, 3)) * 255
        img = Image.fromarray(arr.astype({"I;16": np.uint16, "F": np.float32}.get(mode, np.uint8)))
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out.append(buf.getvalue())
    with tempfile.TemporaryDirectory() as d:
        out.append(write_dicom(Path(d) / "s.dcm", (rng.random((12, 10)) * 4000).astype(np.uint16)).read_bytes())
    return out


SAMPLES = _samples()


@PROPS
@given(which=st.integers(0, len(SAMPLES) - 1), cut=st.floats(0.05, 1.0),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=8))
def test_mutated_valid_files_only_raise_image_read_error(which: int, cut: float, flips: list[tuple[float, int]]):
    data = bytearray(SAMPLES[which][: max(1, int(len(SAMPLES[which]) * cut))])
    for pos, value in flips:
        data[int(pos * len(data))] = value
    try:
        out = decode_image(bytes(data), name="m.dcm" if which == len(SAMPLES) - 1 else "m.img", max_pixels=1_000_000)
    except ImageReadError:
        return
    _check_decoded(out)


#: (format, mode) pairs Pillow writes losslessly (JPEG: only the shape and range are checked)
VALID = [("PNG", "1"), ("PNG", "L"), ("PNG", "LA"), ("PNG", "P"), ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "I;16"),
         ("BMP", "L"), ("BMP", "RGB"), ("TIFF", "L"), ("TIFF", "RGB"), ("TIFF", "F"), ("TIFF", "I;16"),
         ("JPEG", "L"), ("JPEG", "RGB")]


@PROPS
@given(kind=st.sampled_from(VALID), h=st.integers(1, 40), w=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_random_valid_images_decode_to_unit_float(kind: tuple[str, str], h: int, w: int, seed: int):
    fmt, mode = kind
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        arr = rng.integers(0, 65536, (h, w)).astype(np.uint16)
        img = Image.fromarray(arr)
    elif mode == "F":
        arr = (rng.random((h, w)) * 1000 - 500).astype(np.float32)
        img = Image.fromarray(arr)
    else:
        chans = {"1": 1, "L": 1, "LA": 2, "P": 1, "RGB": 3, "RGBA": 4}[mode]
        arr = rng.integers(0, 256, (h, w, chans) if chans > 1 else (h, w)).astype(np.uint8)
        if mode == "1":
            arr = (arr > 127).astype(np.uint8) * 255
        img = Image.fromarray(arr, {"1": "L", "P": "L"}.get(mode, mode))
        if mode == "1":
            img = img.convert("1")
        elif mode == "P":
            img = img.convert("P")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    out = decode_image(buf.getvalue(), name=f"r.{fmt.lower()}")
    _check_decoded(out)
    assert out.shape[:2] == (h, w)
    if mode in ("1", "L", "LA", "I;16", "F"):
        assert out.ndim == 2
    elif mode == "RGB":
        assert out.ndim == 3
    if fmt == "JPEG":
        return
    if mode == "L":
        np.testing.assert_array_equal(out, arr / np.float32(255))
    elif mode == "1":
        np.testing.assert_array_equal(out, arr / np.float32(255))
    elif mode == "I;16":
        np.testing.assert_allclose(out, arr / 65535.0, atol=1e-7)
    elif mode == "F":
        lo, hi = arr.min(), arr.max()
        np.testing.assert_allclose(out, (arr - lo) / (hi - lo) if hi > lo else 0 * arr, atol=1e-6)
    elif mode == "RGB":
        np.testing.assert_array_equal(out, arr / np.float32(255))


@PROPS
@given(h=st.integers(1, 24), w=st.integers(1, 24), frames=st.integers(1, 3), seed=st.integers(0, 2**16),
       photometric=st.sampled_from(["MONOCHROME1", "MONOCHROME2"]))
def test_random_valid_dicoms_decode_to_unit_float(tmp_path_factory, h: int, w: int, frames: int, seed: int,
                                                  photometric: str):
    px = np.random.default_rng(seed).integers(0, 4096, (frames, h, w)).astype(np.uint16)
    path = write_dicom(tmp_path_factory.mktemp("dcm") / "r.dcm", px if frames > 1 else px[0],
                       photometric=photometric, frames=frames)
    out = read_image(path)
    _check_decoded(out)
    assert out.shape == (h, w)
    ref = px[0].astype(np.float64) / 65535.0  # BitsStored 16, no VOI window: the bit-depth range (issue 15)
    np.testing.assert_allclose(out, 1 - ref if photometric == "MONOCHROME1" else ref, atol=1e-6)


#: DICOM image-pixel elements and the VR they are written with when the value is a string
DICOM_FIELDS = {"Rows": 0x00280010, "Columns": 0x00280011, "BitsAllocated": 0x00280100, "BitsStored": 0x00280101,
                "HighBit": 0x00280102, "PixelRepresentation": 0x00280103, "SamplesPerPixel": 0x00280002,
                "PhotometricInterpretation": 0x00280004, "NumberOfFrames": 0x00280008, "RescaleSlope": 0x00281053,
                "RescaleIntercept": 0x00281052, "WindowCenter": 0x00281050, "WindowWidth": 0x00281051}
HEADER_VALUES = st.one_of(st.integers(0, 70000), st.sampled_from(["", "abc", "nan", "inf", "-1", "1e309", "3",
                                                                   "MONOCHROME1", "RGB", "PALETTE COLOR", "1\\2"]))


@PROPS
@example(changes=[("Columns", 1)], seed=0)  # 30 pixels as 6 x 1: pydicom returns 5 frames the header does not count
@given(changes=st.lists(st.tuples(st.sampled_from(sorted(DICOM_FIELDS)), HEADER_VALUES), min_size=1, max_size=4),
       seed=st.integers(0, 99))
def test_dicoms_with_random_header_values_only_raise_image_read_error(tmp_path_factory, changes, seed: int):
    """A valid DICOM whose pixel-describing elements get random (also non-numeric, NaN, huge) values."""
    from pydicom.dataelem import DataElement

    def extra(ds: Any) -> None:
        for key, value in changes:
            tag = DICOM_FIELDS[key]
            if isinstance(value, int) and value < 65536 and key not in ("PhotometricInterpretation",):
                ds[tag] = DataElement(tag, "US" if tag < 0x00281000 and key != "NumberOfFrames" else "IS",
                                      value if key != "NumberOfFrames" else str(value))
            else:
                ds[tag] = DataElement(tag, "LO", str(value))

    px = np.random.default_rng(seed).integers(0, 4096, (6, 5)).astype(np.uint16)
    try:
        path = write_dicom(tmp_path_factory.mktemp("dcmh") / "h.dcm", px, extra=extra)
    except Exception:  # noqa: BLE001 - pydicom refused to write this combination: nothing to read
        return
    try:
        out = read_image(path)
    except ImageReadError:
        return
    _check_decoded(out)


# --- tables ------------------------------------------------------------------------------------------------

IMAGE_NAMES = [f"img_{k}.png" for k in range(6)]
CELL = st.one_of(
    st.just(float("nan")), st.just(""), st.text(max_size=12),
    st.lists(st.sampled_from([*NIH_LABELS, "No Finding", "Covid", " Effusion ", "nan", "Mass|", "a,b", '"q"']),
             max_size=4).map("|".join))


@pytest.fixture(scope="module")
def nih_fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nih-fuzz")
    (root / "images").mkdir()
    for name in IMAGE_NAMES:
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "images" / name)
    return root


def _check_table(t: Any) -> None:
    n, nl = len(t.records), len(t.labels)
    assert t.targets.shape == t.mask.shape == (n, nl) and t.targets.dtype == np.float32
    assert np.isin(t.targets, [0.0, 1.0]).all() and np.isin(t.mask, [0.0, 1.0]).all()
    assert set(t.records["split"]) <= {"train", "val", "test"}
    assert not t.records["image_id"].duplicated().any()
    assert all(Path(p).is_file() for p in t.records["path"])


@PROPS
@example(rows=[("", "Effusion", 1, "PA"), ("img_0.png", float("nan"), float("nan"), float("nan"))], labels=None)
@given(rows=st.lists(st.tuples(st.sampled_from([*IMAGE_NAMES, "absent.png", "", "x.jpg"]), CELL,
                               st.one_of(st.just(float("nan")), st.integers(0, 3), st.text(max_size=5)),
                               st.sampled_from(["PA", "AP", "", float("nan"), "LL"])), max_size=12),
       labels=st.one_of(st.none(), st.lists(st.sampled_from([*NIH_LABELS[:4], "effusion", "Pneumonitis"]),
                                            max_size=3)))
def test_random_nih_tables_give_a_table_or_a_dataset_error(nih_fuzz_root: Path, rows, labels):
    nih_root(nih_fuzz_root, rows, images=False)
    try:
        t = NIHChestXray14.load_table(nih_fuzz_root, labels=tuple(labels) if labels else None)
    except DatasetError as e:
        assert str(nih_fuzz_root) in str(e) or "nih" in str(e)
        return
    _check_table(t)


@PROPS
@given(text=st.text(max_size=400))
def test_random_csv_text_gives_a_table_or_a_dataset_error(nih_fuzz_root: Path, text: str):
    (nih_fuzz_root / "Data_Entry_2017.csv").write_text(text, encoding="utf-8")
    try:
        t = NIHChestXray14.load_table(nih_fuzz_root)
    except DatasetError:
        return
    _check_table(t)


# ---------------------------------------------------------------------------------------------------------
# resource limits
# ---------------------------------------------------------------------------------------------------------

def test_image_cache_has_its_stated_size_and_is_memory_mapped(tmp_path: Path):
    n, c, s = 10, 1, 32
    cache = ImageCache(tmp_path, "k", n, c, s)
    assert cache.path.stat().st_size == n * c * s * s + n  # uint8 (N, C, S, S) then a flag per row, as documented
    calls = []
    row = cache.get(3, lambda: calls.append(1) or np.full((c, s, s), 0.5, np.float32))
    assert row.dtype == np.uint8 and row.shape == (c, s, s) and int(row[0, 0, 0]) == 128
    assert isinstance(cache._data, np.memmap)  # paged by the OS, not read into memory
    assert cache.path.stat().st_size == n * c * s * s + n  # writes never grow it
    again = ImageCache(tmp_path, "k", n, c, s)  # a new process: the filled row is reused, not decoded again
    np.testing.assert_array_equal(again.get(3, lambda: pytest.fail("decoded twice")), row)
    assert calls == [1]
    os.truncate(cache.path, n * c * s * s)  # another size (the older layout, a crash): rebuilt, not a crash
    rebuilt = ImageCache(tmp_path, "k", n, c, s)
    assert int(rebuilt.get(3, lambda: np.zeros((c, s, s), np.float32))[0, 0, 0]) == 0


def test_image_cache_recreated_by_another_rank_leaves_an_open_one_intact(tmp_path: Path, monkeypatch):
    """torchrun's ranks build their datasets at once, so a rank can find the cache not yet whole and create it while
    another already has it mapped. The file is replaced, never truncated in place: the mapped one keeps its rows
    and flags (one consistent copy) and the file in place is a fresh, whole cache."""
    n, c, s = 4, 1, 8
    first = ImageCache(tmp_path, "k", n, c, s)
    first.get(0, lambda: np.ones((c, s, s), np.float32))
    monkeypatch.setattr(ImageCache, "_whole", lambda self: False)  # the other rank looked before it was whole
    second = ImageCache(tmp_path, "k", n, c, s)
    assert int(first.get(0, lambda: pytest.fail("the mapped row was lost"))[0, 0, 0]) == 255
    assert int(first.get(1, lambda: np.full((c, s, s), 0.5, np.float32))[0, 0, 0]) == 128
    assert int(second.get(0, lambda: np.zeros((c, s, s), np.float32))[0, 0, 0]) == 0
    assert second.path.stat().st_size == n * c * s * s + n and len(list(tmp_path.iterdir())) == 1


def test_dataset_cache_file_is_n_c_s_s_bytes_and_a_flag_per_row(phantom_root: Path, tmp_path: Path):
    from medistill.data import Preprocess
    from medistill.data.phantom import Phantom

    ds = Phantom(phantom_root, "val", preprocess=Preprocess(24, 1), cache_dir=tmp_path, limit=20)
    files = list(tmp_path.glob("*.u8"))
    assert len(files) == 1 and files[0].stat().st_size == len(ds) * (1 * 24 * 24 + 1) == 20 * 577


def test_building_a_dataset_decodes_nothing(tmp_path: Path, monkeypatch):
    """A 200-image folder dataset: construction lists files and hashes them, but decodes none; an item decodes one."""
    from medistill.data import images as im
    from medistill.data.folder import ImageFolder

    root = tmp_path / "folder"
    for k in range(200):
        d = root / ("normal" if k % 2 else "tumour")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), k % 256, np.uint8)).save(d / f"{k:03d}.png")
    decoded: list[str] = []
    real_read, real_open = im.read_image, Image.open

    def counting_read(path: Any, **kw: Any) -> np.ndarray:
        decoded.append(str(path))
        return real_read(path, **kw)

    def no_open(*a: Any, **kw: Any) -> Any:
        raise AssertionError("an image was opened while building the dataset")

    monkeypatch.setattr(im, "read_image", counting_read)
    monkeypatch.setattr(Image, "open", no_open)
    ds = ImageFolder(root, "train", cache_dir=tmp_path / "cache")
    assert len(ds) > 100 and decoded == []
    monkeypatch.setattr(Image, "open", real_open)
    item = ds[0]
    assert decoded == [str(ds.path(0))] and item["image"].shape == (1, 128, 128)
