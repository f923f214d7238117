"""images.read_image on the inputs medical data comes in: DICOM (MONOCHROME1, rescale, window), 16-bit PNG,
RGBA, palette, and the broken ones (truncated, zero-byte, huge, no pixel data): each broken one is an
ImageReadError naming the file and the reason."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from medistill.data.images import ImageReadError, image_size, read_image
from imaging import write_dicom, png_header_only


# --- DICOM -------------------------------------------------------------------------------------------------

def test_dicom_monochrome2_is_scaled_to_its_bit_depth(tmp_path):
    px = (np.arange(12).reshape(3, 4) * 100).astype(np.uint16)  # 0 .. 1100, BitsStored 16, no VOI window
    img = read_image(write_dicom(tmp_path / "a.dcm", px))
    assert img.shape == (3, 4) and img.dtype == np.float32
    np.testing.assert_allclose(img, px / 65535.0, atol=1e-6)  # the range 16 bits allow, not the image's min-max


def _bits(n: int):
    def set_bits(ds):
        ds.BitsStored, ds.HighBit = n, n - 1
    return set_bits


def test_same_pixels_as_dicom_and_png_give_the_same_image(tmp_path):
    # issue 15, item 1: an 8-bit chest X-ray (pixels 1 .. 243) as PNG and as DICOM (BitsStored 8, no window) must
    # be the same model input; the old rule stretched the DICOM to its own min-max (off by up to 0.047)
    px = np.random.default_rng(0).integers(1, 244, (16, 16)).astype(np.uint8)
    px[0, :2] = (1, 243)
    Image.fromarray(px).save(tmp_path / "x.png")
    dcm = write_dicom(tmp_path / "x.dcm", px.astype(np.uint16), extra=_bits(8))
    png = read_image(tmp_path / "x.png")
    np.testing.assert_array_equal(read_image(dcm), png)
    np.testing.assert_allclose(png, px / 255.0, atol=1e-7)
    m1 = read_image(write_dicom(tmp_path / "m1.dcm", 255 - px.astype(np.uint16), photometric="MONOCHROME1",
                                extra=_bits(8)))
    np.testing.assert_allclose(m1, png, atol=1e-6)  # MONOCHROME1 and MONOCHROME2 still agree


def test_dicom_bit_depth_range_goes_through_rescale_and_sign(tmp_path):
    px = np.array([[0, 2048, 4095]], dtype=np.uint16)  # 12 bits stored, rescaled to -1024 .. 3071 (CT-like)
    img = read_image(write_dicom(tmp_path / "ct.dcm", px, slope=1, intercept=-1024, extra=_bits(12)))
    np.testing.assert_allclose(img[0], px[0] / 4095.0, atol=1e-6)


def test_legacy_rule_is_the_old_min_max(tmp_path):
    from medistill.data.images import LEGACY_INTENSITY_RULE

    px = (np.arange(12).reshape(3, 4) * 100).astype(np.uint16)
    img = read_image(write_dicom(tmp_path / "a.dcm", px), intensity=LEGACY_INTENSITY_RULE)
    np.testing.assert_allclose(img, px / 1100.0, atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path):
    px = (np.arange(12).reshape(3, 4) * 100).astype(np.uint16)
    m1 = read_image(write_dicom(tmp_path / "m1.dcm", px, photometric="MONOCHROME1"))
    m2 = read_image(write_dicom(tmp_path / "m2.dcm", px, photometric="MONOCHROME2"))
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert m1[0, 0] == pytest.approx(1.0) and m1[-1, -1] < m1[0, 0]  # 0 is white in MONOCHROME1


def test_dicom_rescale_then_window(tmp_path):
    # value = 2 * pixel - 100; window centre 500, width 400 -> [300, 700] maps to [0, 1], clipped outside
    px = np.array([[100, 250, 300, 450]], dtype=np.uint16)  # values 100, 400, 500, 800
    img = read_image(write_dicom(tmp_path / "w.dcm", px, slope=2, intercept=-100, center=500, width=400))
    np.testing.assert_allclose(img[0], [0.0, 0.25, 0.5, 1.0], atol=1e-6)


def test_dicom_without_pixel_data_names_the_file(tmp_path):
    path = write_dicom(tmp_path / "nopix.dcm", np.zeros((4, 4), np.uint16), pixel_data=False)
    with pytest.raises(ImageReadError, match="nopix.dcm.*no pixel data"):
        read_image(path)


def test_dicom_with_undecodable_compressed_pixels(tmp_path):
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    path = write_dicom(tmp_path / "j2k.dcm", np.zeros((4, 4), np.uint16))
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"not a jpeg 2000 codestream"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="j2k.dcm.*cannot be decoded"):
        read_image(path)


def test_dicom_size_from_header(tmp_path):
    assert image_size(write_dicom(tmp_path / "s.dcm", np.zeros((5, 7), np.uint16))) == (5, 7)


# --- PNG / raster ------------------------------------------------------------------------------------------

def test_16bit_png_keeps_its_depth(tmp_path):
    px = np.array([[0, 1000, 40000, 65535]], dtype=np.uint16)
    Image.fromarray(px).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    img = read_image(tmp_path / "d.png")
    np.testing.assert_allclose(img[0], px[0] / 65535.0, atol=1e-6)
    assert img[0, 1] != img[0, 0]  # 1000/65535 is not crushed to 0 as an 8-bit conversion would do


def test_rgba_is_composited_onto_black(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = [[255, 0], [128, 255]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.shape == (2, 2)  # gray content stays one channel
    np.testing.assert_allclose(img, [[200 / 255, 0.0], [200 / 255 * 128 / 255, 200 / 255]], atol=1e-6)


def test_palette_image_is_expanded_to_colour(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.save(tmp_path / "p.png")
    img = read_image(tmp_path / "p.png")
    assert img.shape == (1, 2, 3)
    np.testing.assert_allclose(img[0, 0], [1, 0, 0])
    np.testing.assert_allclose(img[0, 1], [0, 0, 1])


def test_truncated_png(tmp_path):
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="t.png.*truncated or corrupt"):
        read_image(tmp_path / "t.png")


def test_zero_byte_file(tmp_path):
    (tmp_path / "z.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"z.png: empty file \(0 bytes\)"):
        read_image(tmp_path / "z.png")


def test_huge_image_is_refused_before_decoding(tmp_path):
    path = png_header_only(tmp_path / "big.png", 9000, 9000)  # 81 Mpx: over medistill's 64 Mpx limit
    with pytest.raises(ImageReadError, match="big.png: image is 9000x9000 = 81000000 pixels, more than the limit"):
        read_image(path)
    path = png_header_only(tmp_path / "bomb.png", 20000, 20000)  # 400 Mpx: Pillow's own bomb check fires first
    with pytest.raises(ImageReadError, match="bomb.png: refused as a decompression bomb"):
        read_image(path)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ImageReadError, match="more than the limit of 100"):
        read_image(tmp_path / "small.png", max_pixels=100)


def test_missing_file_and_non_image(tmp_path):
    with pytest.raises(ImageReadError, match="nope.png: file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(ImageReadError, match="notes.png: not an image"):
        read_image(tmp_path / "notes.png")


def test_image_cache_is_not_stale_when_a_file_is_rewritten_in_place(tmp_path):
    """The decoded-image cache is keyed by each file's size and modification time too: an image rewritten at the
    same path (a dataset regenerated in place) is decoded again, not served from the cache."""
    import os

    from PIL import Image

    from medistill.config import DataConfig
    from medistill.data import Preprocess, build_dataset

    root = tmp_path / "folder"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.full((16, 16), 40 * k + (0 if c == "a" else 100), np.uint8)).save(root / c / f"{k}.png")
    cfg = DataConfig(dataset="folder", root=str(root), image_size=16, val_fraction=0.0, test_fraction=0.0,
                     cache_dir=str(tmp_path / "cache"))
    pre = Preprocess(16, 1, (0.0,), (1.0,), "none")
    before = build_dataset(cfg, "train", pre)[0]["image"]
    path = build_dataset(cfg, "train", pre).data.records["path"].iloc[0]
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(path)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    after = build_dataset(cfg, "train", pre)[0]["image"]
    assert float(after.max()) == 1.0 and not np.allclose(before.numpy(), after.numpy())
