"""Issue 15, item 9: explanation panels whose overlays overshoot [0, 1] by rounding draw without matplotlib's
"Clipping input data to the valid range for imshow" warning."""

from __future__ import annotations

import logging
import warnings

import numpy as np

from medistill.explain.figures import draw_panel


def test_panel_with_values_just_outside_the_unit_range_draws_quietly(tmp_path, caplog):
    cell = np.full((16, 16, 3), 0.5)
    cell[0, 0] = 1.0000001
    cell[1, 1] = -1e-7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.WARNING):
            path = draw_panel(tmp_path / "p.png", [[cell, cell]], [["a", "b"]], title="t")
    assert path.is_file() and "Clipping input data" not in caplog.text
