"""``GET /api/explanation``: the served model's explanation fidelity from a ``medistill explain`` folder beside it
(the page's fidelity table and gallery); ``available: false`` when there is none."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from test_serve import BASE, LIMIT, export_tiny

EXPLAIN = {"method": "gradcam", "num_images": 2, "maps_with_truth": 3, "model": "kdfmv",
           "pointing_game": 0.62, "pointing_chance": 0.05, "pointing_game_tolerant": 0.81,
           "pointing_chance_tolerant": 0.12, "energy_inside": 0.3, "iou": 0.2, "blank": 0.0,
           "agreement_spearman": 0.71, "agreement_spearman_grid": 0.83, "agreement_grid": 8,
           "cam_layers": {"student": ["stages.4"], "teacher": ["layer3"]},
           "teacher": {"model": "resnet18", "pointing_game": 0.7, "pointing_game_tolerant": 0.9},
           "sanity": {"pointing_game": 0.04, "blank": 0.5, "passed": False, "spearman_to_trained": 0.7,
                      "reasons": ["maps barely change when the weights are randomised (Spearman 0.70 >= 0.5)"]},
           "per_label": {"Nodule": {"maps": 2, "pointing_game": 0.5, "pointing_chance": 0.01}},
           "images": [{"name": "ph_1", "overlay": "overlays/0000_ph_1.png", "maps": [{"label": "Nodule"}]},
                      {"name": "ph_2", "overlay": "../outside.png", "maps": []}]}


@pytest.fixture()
def layout(tmp_path_factory, tmp_path):
    """The quickstart layout: <run>/export/model.onnx beside <run>/explain/explain.json and an overlay."""
    model = export_tiny(tmp_path_factory.getbasetemp() / "serve-model")
    (tmp_path / "export").mkdir()
    shutil.copy(model, tmp_path / "export" / "model.onnx")
    (tmp_path / "explain" / "overlays").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "explain" / "overlays" / "0000_ph_1.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "outside.png")
    (tmp_path / "explain" / "explain.json").write_text(json.dumps(EXPLAIN))
    return tmp_path


def client_for(path):
    from fastapi.testclient import TestClient

    from medistill.serve import create_app

    return TestClient(create_app(path, max_upload_bytes=LIMIT), base_url=BASE)


def test_explanation_beside_the_model_is_served(layout):
    with client_for(layout / "export" / "model.onnx") as c:
        r = c.get("/api/explanation")
    assert r.status_code == 200
    e = r.json()
    assert e["available"] is True and e["folder"] == "explain" and e["method"] == "gradcam" and e["maps_with_truth"] == 3
    explained, teacher, randomised = e["models"]
    assert explained["what"] == "explained model" and explained["model"] == "kdfmv"
    assert explained["pointing_game"] == 0.62 and explained["pointing_chance"] == 0.05
    assert explained["pointing_game_tolerant"] == 0.81 and explained["spearman_to_teacher"] == 0.71
    assert (explained["spearman_to_teacher_grid"], explained["agreement_grid"]) == (0.83, 8)  # the CAM's 8 x 8 cells
    assert teacher["spearman_to_teacher"] is None and teacher["spearman_to_teacher_grid"] is None
    assert teacher["model"] == "resnet18" and teacher["pointing_game_tolerant"] == 0.9
    assert randomised["what"] == "randomised weights" and randomised["blank"] == 0.5
    # each method's randomisation check: the explained model's failed, the teacher's was not run
    assert explained["sanity"]["checked"] is True and explained["sanity"]["passed"] is False
    assert explained["sanity"]["method"] == "gradcam" and explained["sanity"]["spearman_to_trained"] == 0.7
    assert "barely change" in explained["sanity"]["reasons"][0]
    assert teacher["sanity"] == {"method": None, "checked": False, "passed": None, "reasons": []}
    assert randomised["sanity"] is None
    assert e["per_label"]["Nodule"]["pointing_game"] == 0.5
    # only files inside the explanation folder are embedded
    assert [o["image"] for o in e["overlays"]] == ["ph_1"]
    assert e["overlays"][0]["uri"].startswith("data:image/png;base64,")


def test_no_or_broken_explanation_is_not_available(layout):
    """200 with available false (a 404 would be a console error on every page load of a model without one)."""
    (layout / "explain" / "explain.json").write_text("{oops")
    with client_for(layout / "export" / "model.onnx") as c:
        r = c.get("/api/explanation")
        assert r.status_code == 200 and r.json() == {"available": False,
                                                     "detail": "explain/explain.json is not readable JSON"}
        shutil.rmtree(layout / "explain")
        r = c.get("/api/explanation")
    assert r.status_code == 200 and r.json()["available"] is False and "explain.json" in r.json()["detail"]


def test_the_file_name_is_explains():
    """One name for explain's summary, in ``runs``: what explain writes is what serve and the report look for."""
    from medistill import runs
    from medistill.explain import EXPLAIN_FILE
    from medistill.report.folders import EXPLAIN_FILE as REPORTED
    from medistill.serve.fidelity import EXPLAIN_FILE as SERVED

    assert SERVED is EXPLAIN_FILE is REPORTED is runs.EXPLAIN_FILE == "explain.json"
