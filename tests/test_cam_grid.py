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
