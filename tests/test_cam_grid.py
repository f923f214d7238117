"""Where a class activation map is laid over the image (issue 38, item 1): a stride-2 convolution with symmetric
padding (EfficientNet, MobileNet, ResNet) centres its cell ``i`` on pixel ``2 i``, not on ``2 i + 0.5`` as an even
bilinear resize assumes, so a stride-16 map drawn by resizing points 7.5 px right of and below the evidence. These
tests pin the traced cell centres and that ``explain`` puts a map's peak on the pixel that caused it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from medistill.explain import explain_maps
from medistill.explain.metrics import pointing_game
from medistill.maps.base import place_maps
from medistill.models import create_model
from medistill.models.cam_layers import Grid, layer_grids


class DotNet(nn.Module):
    """Two 3x3 stride-2 box filters (padding 1, as EfficientNet's downsampling convolutions), ReLU, mean, one logit.

    A single bright pixel at ``(4 r, 4 c)`` reaches exactly one cell of the stride-4 map, ``(r, c)``: a cell of a
    stride-2, padding-1 convolution is centred on input pixel ``2 i`` and spans ``2 i - 1 .. 2 i + 1``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False)
        self.conv2 = nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False)
        for conv in (self.conv1, self.conv2):
            nn.init.ones_(conv.weight)
        self.num_classes = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x))).mean((2, 3))  # (B, 1)


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "layercam"])
def test_the_map_peaks_on_the_pixel_that_caused_it(method):
    """The dot at (16, 20) lights cell (4, 5) of the 8 x 8 map alone. Laid over the image by the traced grid that
    cell's value sits on pixel (16, 20); an even resize (what pytorch-grad-cam does) put it at (17.5, 21.5), so the
    peak missed a one-pixel truth."""
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 16, 20] = 1.0
    truth = np.zeros((32, 32), bool)
    truth[16, 20] = True
    maps = explain_maps(DotNet(), x, [0], method, layer="conv2")  # (1, 32, 32)
    assert np.unravel_index(maps[0].argmax(), maps[0].shape) == (16, 20)
    assert pointing_game(maps[0], truth) == 1.0


def test_traced_grids_of_strided_convolutions_pools_and_tf_same_padding():
    # stride-2 convolutions with padding k // 2: every stage's cell i is centred on pixel stride * i
    lite = create_model("efficientnet_lite0", num_classes=3, in_chans=1, image_size=128)
    stages = lite.pretrained_cfg["feature_stages"]
    grids = layer_grids(lite, {n: lite.get_submodule(n) for n in stages}, (1, 128, 128))
    assert {n: (g.stride, g.offset) for n, g in grids.items()} == {
        "blocks.0": ((2, 2), (0, 0)), "blocks.1": ((4, 4), (0, 0)), "blocks.2": ((8, 8), (0, 0)),
        "blocks.4": ((16, 16), (0, 0)), "blocks.6": ((32, 32), (0, 0))}
    # 2x2 max-pooling tiles the image evenly: the grid bilinear resizing assumes, so those maps do not move
    kdfmv = create_model("kdfmv", num_classes=3, in_chans=1, image_size=64)
    got = layer_grids(kdfmv, {"stages.3": kdfmv.get_submodule("stages.3")}, (1, 64, 64))["stages.3"]
    assert got == Grid.half_pixel((64, 64), (4, 4)) == Grid((16, 16), (7.5, 7.5))
    # TensorFlow "SAME" padding (timm's Conv2dSame) pads after more than before: cell i centred on 2 i + 1 at stride 2
    tf = create_model("tf_efficientnet_lite1", num_classes=3, in_chans=1, image_size=64)
    got = layer_grids(tf, {"blocks.0": tf.get_submodule("blocks.0")}, (1, 64, 64))["blocks.0"]
    assert got == Grid((2, 2), (1, 1))
    # a module whose output is no (B, C, h, w) map has no grid
    assert layer_grids(lite, {"classifier": lite.classifier}, (1, 128, 128)) == {"classifier": None}


def test_placing_by_the_even_grid_is_bilinear_resizing():
    """The map of a network whose cells tile the image evenly comes out as before (F.interpolate, OpenCV)."""
    maps = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    placed = place_maps(maps, Grid.half_pixel((64, 64), (8, 8)), (64, 64))
    resized = F.interpolate(torch.from_numpy(maps)[:, None], size=(64, 64), mode="bilinear",
                            align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(placed, resized, atol=1e-6)
    # a top-left-aligned grid puts each cell's value exactly on its centre pixel, the edge value beyond
    placed = place_maps(maps, Grid((8, 8), (0, 0)), (64, 64))
    np.testing.assert_allclose(placed[:, ::8, ::8], maps, atol=1e-6)
    np.testing.assert_allclose(placed[:, 56:, 56:], np.broadcast_to(maps[:, 7:, 7:], (2, 8, 8)), atol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# explanation-aware KD compares the two models' maps where their cells sit (issue 38, item 2)
# ------------------------------------------------------------------------------------------------------------

# an EfficientNet-Lite0 teacher's blocks.4 at 128 px (cell i on pixel 16 i) and a KD-FMV student's stages.2 at
# 64 px (2x2 max-pooling: even tiling), both 8 x 8 and on the image's side, as test_traced_grids_... traces them
TEACHER = Grid((16, 16), (0, 0)).on_image((128, 128))
STUDENT = Grid.half_pixel((64, 64), (8, 8)).on_image((64, 64))


def _blob(grid: Grid, cells: int, centre: tuple[float, float], sigma: float = 0.15) -> torch.Tensor:
    """(1, 1, cells, cells): a Gaussian of evidence at ``centre`` (fractions of the image side) sampled at
    ``grid``'s cell centres: the map of a model that sees the evidence there."""
    ys, xs = (grid.offset[a] + grid.stride[a] * torch.arange(cells, dtype=torch.float64) for a in (0, 1))
    d2 = (ys[:, None] - centre[0]) ** 2 + (xs[None, :] - centre[1]) ** 2
    return torch.exp(-d2 / (2 * sigma ** 2))[None, None].float()


def test_e2kd_matches_the_student_to_the_teacher_where_their_cells_sit():
    """The teacher's map and the student's map of evidence at the same pixel (48, 64) of the image: compared by
    cell index (as before) they are half a cell apart, and the student map index-aligned with the teacher's,
    i.e. evidence 7.5 px off, scored best (loss 0). Compared where the cells sit, the right map is near zero and
    a map half a cell or a whole cell off costs more; the gradient still reaches the student's map."""
    from medistill.losses import CATLoss, E2KDLoss

    at = (48.5 / 128, 64.5 / 128)
    half = TEACHER.offset[0] - STUDENT.offset[0]  # the student map index-aligned with the teacher's: evidence off
    teacher = _blob(TEACHER, 8, at)
    same, shifted, cell = (_blob(STUDENT, 8, (at[0] + d, at[1] + d)) for d in (0.0, -half, 0.125))
    e2kd = E2KDLoss(grids=(STUDENT, TEACHER))
    loss = {k: float(e2kd(s, teacher)) for k, s in (("same", same), ("shifted", shifted), ("cell", cell))}
    assert loss["same"] < 0.01 < loss["shifted"] < loss["cell"], loss
    assert float(E2KDLoss()(shifted, teacher)) < 1e-6 < 0.05 < float(E2KDLoss()(same, teacher))  # as before
    cat = CATLoss(2, grids=(STUDENT, TEACHER))
    assert float(cat(same, teacher)) < 0.1 * float(cat(shifted, teacher))
    s = same.clone().requires_grad_(True)
    e2kd(s, teacher * 0.5 + shifted * 0.5).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0


def test_evenly_tiled_maps_are_compared_exactly_as_before():
    """Two evenly tiled maps (KD-FMV student and teacher), at one size or two: the same loss, bit for bit."""
    from medistill.losses import CATLoss, E2KDLoss

    g = torch.Generator().manual_seed(0)
    teacher, mask = torch.randn(3, 2, 8, 8, generator=g), (torch.rand(3, 2, generator=g) > 0.3).float()
    for side in (4, 8, 16):
        student = torch.randn(3, 2, side, side, generator=g)
        grids = (Grid.half_pixel((64, 64), (side, side)).on_image((64, 64)),
                 Grid.half_pixel((128, 128), (8, 8)).on_image((128, 128)))
        assert torch.equal(E2KDLoss(grids=grids)(student, teacher, mask), E2KDLoss()(student, teacher, mask))
        assert torch.equal(CATLoss(2, grids=grids)(student, teacher, mask), CATLoss(2)(student, teacher, mask))


def test_regrid_is_bilinear_resizing_on_even_grids_and_placing_on_the_pixels():
    from medistill.maps.base import regrid

    maps = torch.from_numpy(np.random.default_rng(1).random((2, 3, 8, 8)).astype(np.float32))
    even = regrid(maps, Grid.half_pixel((64, 64), (8, 8)), Grid.half_pixel((64, 64), (16, 16)), (16, 16))
    assert torch.equal(even, F.interpolate(maps, size=(16, 16), mode="bilinear", align_corners=False))
    # onto the pixels themselves (a grid of stride 1 centred on each pixel) it is place_maps
    onto_pixels = regrid(maps, Grid((8, 8), (0, 0)), Grid((1, 1), (0, 0)), (64, 64))
    placed = place_maps(maps.reshape(6, 8, 8), Grid((8, 8), (0, 0)), (64, 64))
    np.testing.assert_allclose(onto_pixels.reshape(6, 64, 64).numpy(), placed, atol=1e-6)


@pytest.mark.parametrize("loss", ["e2kd", "cat"])
def test_training_hands_the_loss_each_models_traced_grid(loss):
    """The set-up the training loop runs traces both models once and builds the explanation loss with their grids
    on the image: the EfficientNet teacher's cells start at its first pixel, the KD-FMV student's tile evenly."""
    from types import SimpleNamespace

    from medistill.config import RunConfig
    from medistill.models import input_config
    from medistill.task import get_task
    from medistill.train.setup import _explanation_term, _map_layers

    cfg = RunConfig()
    cfg.distill.explain_loss = loss
    lite = create_model("efficientnet_lite0", num_classes=3, in_chans=1, image_size=128)
    student = create_model("kdfmv", num_classes=3, in_chans=1, image_size=64)
    maps = _map_layers(cfg, student, SimpleNamespace(model=lite, input=input_config(lite)), input_config(student))
    assert (maps.student, maps.teacher, maps.side) == (("stages.2",), ("blocks.4",), 8)
    assert maps.grids == (STUDENT, TEACHER)
    assert _explanation_term(cfg, get_task("multilabel"), maps.grids).grids == (STUDENT, TEACHER)
    # several layers (cam_layers fuse): the teacher's are combined where their cells sit, the student's evenly
    cfg.distill.cam_layers = "fuse"
    maps = _map_layers(cfg, student, SimpleNamespace(model=lite, input=input_config(lite)), input_config(student))
    assert maps.teacher == ("blocks.4", "blocks.6") and maps.student_grids is None
    assert maps.teacher_grids == (Grid((16, 16), (0, 0)), Grid((32, 32), (0, 0)))
    assert maps.grids == (STUDENT, TEACHER)  # the fused map is on its finest layer's cells


# an EfficientNet's blocks.4 (8 x 8, cell i on pixel 16 i) and blocks.6 (4 x 4, on 32 i) at 128 px
FINE, DEEP = Grid((16, 16), (0, 0)), Grid((32, 32), (0, 0))


def test_fused_and_refined_layers_meet_where_their_cells_sit():
    """A deep cell (1, 2) sits on pixel (32, 64), as does the fine cell (2, 4). Resized evenly the deep map's
    evidence spread over fine cells (2..3, 4..5) alike (its peak half a fine cell, 8 px, down-right of (2, 4));
    placed by the grids it lands on (2, 4), symmetric about it."""
    from medistill.maps.combine import fuse_maps, refine_maps

    deep = torch.zeros(1, 1, 4, 4)
    deep[0, 0, 1, 2] = 1.0
    blank, uniform = torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)  # fine maps that add nothing of their own
    for combined in (fuse_maps([blank, deep], [FINE, DEEP]), refine_maps([uniform, deep], [FINE, DEEP])):
        m = combined[0, 0]
        assert np.unravel_index(int(m.argmax()), m.shape) == (2, 4) and float(m[2, 4]) == 1.0
        assert float(m[1, 4]) == float(m[3, 4]) and float(m[2, 3]) == float(m[2, 5])
    before = fuse_maps([blank, deep])[0, 0]
    assert float(before[2, 4]) == float(before[2, 5]) == float(before[3, 4]) == float(before[3, 5]) == 1.0
    assert float(fuse_maps([blank, deep], [FINE, DEEP])[0, 0, 3, 5]) < 1.0
    # a fine map's evidence within the deep cell stays where the fine layer saw it
    fine = torch.zeros(1, 1, 8, 8)
    fine[0, 0, 2, 5] = 1.0
    m = refine_maps([fine, deep], [FINE, DEEP])[0, 0]
    assert np.unravel_index(int(m.argmax()), m.shape) == (2, 5)


@pytest.mark.parametrize("combine", ["fuse", "poly"])
def test_evenly_tiled_layers_combine_exactly_as_before(combine):
    """KD-FMV's stages at 64 px (2x2 max-pooling): their traced grids change nothing, bit for bit."""
    from medistill.maps.combine import fuse_maps, refine_maps

    fn = fuse_maps if combine == "fuse" else refine_maps
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, 3, n, n, generator=g) for n in (16, 8, 4)]
    grids = [Grid.half_pixel((64, 64), (n, n)) for n in (16, 8, 4)]
    assert torch.equal(fn(maps, grids), fn(maps))
    assert torch.equal(fn(maps, [grids[0], None, grids[2]]), fn(maps))  # one unknown: all resized evenly


# ------------------------------------------------------------------------------------------------------------
# the exported model's map is drawn where its cells sit (issue 38, item 3): export records the cams' grid in the
# model file (medistill.cam_grid), predict / serve place the map by it without torch
# ------------------------------------------------------------------------------------------------------------

class DotCamNet(nn.Module):
    """:class:`DotNet` with the contract the explain graph needs (``forward_features`` ending in the CAM layer,
    global average pooling, a linear classifier): its one 8 x 8 map at 32 px is lit at cell ``(r, c)`` alone by a
    bright pixel at ``(4 r, 4 c)``."""

    def __init__(self) -> None:
        super().__init__()
        convs = [nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False) for _ in range(2)]
        for conv in convs:
            nn.init.ones_(conv.weight)
        self.features = nn.Sequential(*convs, nn.ReLU())
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1, 1)
        nn.init.ones_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)
        self.num_classes = 1
        self.pretrained_cfg = {"input_size": (1, 32, 32), "mean": (0.0,), "std": (1.0,), "cam_layer": "features",
                               "feature_stages": []}

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 1, 8, 8)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.global_pool(feats).flatten(1))  # (B, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _heat_of(rgb: np.ndarray, image: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The map value (H, W) an overlay (uint8 (H, W, 3) of a gray ``image`` (H, W)) shows: its colour less the
    image's share, read back through matplotlib's jet by the nearest of 1,001 colours."""
    import matplotlib

    colour = (rgb.astype(np.float64) / 255 - (1 - alpha) * image[..., None]) / alpha  # (H, W, 3)
    values = np.linspace(0, 1, 1001)
    lut = matplotlib.colormaps["jet"](values)[:, :3]  # (1001, 3)
    return values[((colour[..., None, :] - lut) ** 2).sum(-1).argmin(-1)]


@pytest.fixture(scope="module")
def dot_model(tmp_path_factory: pytest.TempPathFactory):
    """DotCamNet exported with maps, and a gray 32 x 32 PNG with its one bright pixel at (16, 20) (cell (4, 5)) on black."""
    from PIL import Image

    from medistill.export.onnx import export_onnx

    d = tmp_path_factory.mktemp("dot")
    path = export_onnx(DotCamNet(), d / "dot.onnx", labels=["dot"], task="multilabel", explain=True)
    image = np.zeros((32, 32))
    image[16, 20] = 1.0
    Image.fromarray(np.rint(image * 255).astype(np.uint8)).save(d / "dot.png")
    return path, d / "dot.png", np.rint(image * 255) / 255


def test_the_exported_models_overlay_peaks_on_the_pixel_that_caused_it(dot_model, tmp_path):
    """The exported stride-2 padded model's map lights cell (4, 5), centred on pixel (16, 20): the export records
    that grid, and predict's overlay peaks there. Before, the overlay resized the 8 x 8 map evenly: its peak was
    shared by pixels (17..18, 21..22), 1.5 px right of and below the evidence (half a cell: 2 px at this stride)."""
    from PIL import Image

    from medistill.inference import Predictor, save_overlays

    path, png, image = dot_model
    predictor = Predictor(path)
    assert predictor.info.cam_grid == Grid((4, 4), (0, 0)).on_image((32, 32)) == Grid((1 / 8, 1 / 8), (1 / 64, 1 / 64))
    pred = next(predictor.predict([png], maps=True, keep_images=True))
    assert pred.map_grid == predictor.info.cam_grid
    assert np.unravel_index(pred.maps[0].argmax(), (8, 8)) == (4, 5) and pred.maps[0].sum() == pytest.approx(1.0, abs=1e-4)
    [written] = save_overlays(pred, predictor.labels, tmp_path, which="all")
    heat = _heat_of(np.asarray(Image.open(written)), image)
    assert np.unravel_index(heat.argmax(), heat.shape) == (16, 20)
    assert heat[16, 20] == pytest.approx(1.0, abs=0.02) and heat[17, 21] == pytest.approx(0.75 ** 2, abs=0.03)


def test_an_even_grid_or_a_file_without_one_is_drawn_exactly_as_before(dot_model, tmp_path):
    """A map whose cells tile the image evenly (KD-FMV's pooling), or from a file exported before cam_grid, is laid
    over the image by the plain bilinear resize as before, bit for bit; the page then gets the even grid."""
    import onnx

    from medistill.data import images as im
    from medistill.inference import Predictor, overlay, place_map, seal_model_file

    cam = np.random.default_rng(0).random((4, 4)).astype(np.float32)
    for size in ((64, 64), (80, 50)):
        before = im.resize(cam, size)
        assert np.array_equal(place_map(cam, size), before)
        assert np.array_equal(place_map(cam, size, Grid.even((4, 4))), before)
        # the even grid as the trace finds it for 2x2 max-pooling at 64 px
        assert np.array_equal(place_map(cam, size, Grid.half_pixel((64, 64), (4, 4)).on_image((64, 64))), before)
    proto = onnx.load(str(dot_model[0]))  # the same file as an older medistill wrote it: no cam_grid entry
    keep = [e for e in proto.metadata_props if e.key != "medistill.cam_grid"]
    assert len(keep) == len(proto.metadata_props) - 1
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    old = tmp_path / "old.onnx"
    onnx.save_model(proto, str(old))
    seal_model_file(old)
    predictor = Predictor(old)
    pred = next(predictor.predict([dot_model[1]], maps=True, keep_images=True))
    assert predictor.info.cam_grid is None and pred.map_grid is None
    gray = pred.image
    expected = overlay(gray, pred.maps[0])  # today's: an even resize
    assert np.array_equal(overlay(gray, pred.maps[0], grid=pred.map_grid), expected)
    assert np.unravel_index(_heat_of(expected, dot_model[2]).argmax(), (32, 32)) == (17, 21)  # the old offset


def test_the_runtimes_placement_is_explains():
    """The torch-free place_map (fractions of the image side) and explain's place_maps (torch, pixels) lay a map
    on the same pixels, for an EfficientNet-like grid, TF "SAME" padding's, and a non-square image."""
    from medistill.inference import place_map

    maps = np.random.default_rng(1).random((1, 8, 6)).astype(np.float32)
    for grid in (Grid((16, 16), (0, 0)), Grid((16, 16), (7.5, 7.5)), Grid((2, 2), (1, 1)), Grid((16, 21), (3, 0))):
        for size in ((128, 96), (128, 128)):
            torch_placed = place_maps(maps, grid, size)[0]
            np.testing.assert_allclose(place_map(maps[0], size, grid.on_image(size)), torch_placed, atol=1e-5)
