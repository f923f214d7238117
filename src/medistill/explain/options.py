"""What to explain and how: the options of :func:`medistill.explain.runner.explain_run` and of ``medistill explain``.

Plain dataclasses, torch-free, each field declared with :func:`medistill.config.option` (its help text): the
command line generates one flag per field from them (``cli/common.py``) and reads the same names from a
``--config`` YAML file, so flags, YAML keys and the library's arguments never disagree. Unknown keys are refused
naming the valid ones.
"""

from __future__ import annotations

import dataclasses

from ..config import option
from ..datasets import DATASETS
from ..maps.errors import ExplainError
from . import CAM_LAYER_POLICIES, DEFAULT_CAM_LAYERS, DEFAULT_CAM_MIN_SIZE, TRUTH_LABELS, canonical_method


@dataclasses.dataclass
class ExplainOptions:
    """How to explain (the CLI's flags). Labels: ``labels`` when given (``truth``: each image's ground-truth
    positive labels); else, multi-label, those predicted positive (the run's thresholds, or 0.5), else the
    ``top_k`` most probable; single-label, the predicted class."""

    method: str = option("gradcam", "gradcam, gradcam++, hirescam, eigencam, layercam (pytorch-grad-cam); "
                                    "integrated_gradients (ig), gradientshap (shap), occlusion (captum); fmv (KD-FMV average "
                                    "feature map of the last stage)")
    teacher_method: str | None = option(None, "the teacher's maps with another method than the student's (e.g. "
                                              "gradientshap: the maps distill.explain_teacher_maps gradientshap "
                                              "taught the student to match), so that the agreement scores compare "
                                              "the student with those; None = method")
    labels: list[str] | None = option(None, "labels to explain on every image; 'truth' = each image's ground-truth "
                                            "positive labels (a dataset split; as localisation studies do); None = "
                                            "the predicted positive ones, else the top_k (single-label: the "
                                            "predicted class)")
    top_k: int = option(3, "multi-label with no positive prediction: explain the top_k labels")
    batch_size: int = option(16, "(image, label) pairs per explainer call")
    size: int | None = option(None, "side of the maps, overlays and truth; None = the student's input size")
    layer: str | None = option(None, "the student's CAM layer by module name (overrides cam_layers for the "
                                     "student; the teacher's follows cam_layers)")
    cam_layers: str = option(DEFAULT_CAM_LAYERS, "CAM layer policy: auto (the deepest feature stage whose map is at "
                                                 "least cam_min_size px a side), fuse (that stage and every deeper "
                                                 "one, maps averaged: LayerCAM-style), poly (the same stages, the "
                                                 "deepest map refined by the finer ones: Poly-CAM), model (the "
                                                 "model's declared CAM layer, often stride 32)")
    cam_min_size: int = option(DEFAULT_CAM_MIN_SIZE, "cam_layers auto / fuse / poly: the smallest map side accepted")
    faithfulness: bool = option(True, "deletion / insertion AUCs (2 x (steps + 1) forward passes per map)")
    steps: int = option(16, "deletion / insertion steps")
    background: int = option(16, "GradientShap: training images drawn as the background")
    n_samples: int = option(16, "GradientShap: random points per image")
    n_steps: int = option(32, "Integrated Gradients: path steps")
    occlusion_window: int = option(0, "occlusion: side of the occluding square in px; 0 = a tenth of the image")
    occlusion_stride: int = option(0, "occlusion: its step in px; 0 = a third of the window")
    sanity: bool = option(True, "the weight-randomisation check of every method used (Adebayo et al. 2018): a "
                                "weight-shuffled copy of the student (and of the teacher) explained the same way; a "
                                "method whose maps barely change, or still find the truth, is flagged as not "
                                "evidence (--no-sanity skips it, and the outputs say it was not checked)")
    with_truth: bool = option(False, "dataset split: only the images that have ground truth (phantom masks, NIH boxes)")
    overlays: int = option(64, "write overlay PNGs for at most this many images")
    feature_grid: int = option(4, "images (rows) in the feature-map grids; 0 = no grids")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    seed: int = option(0, "GradientShap draws, tie-breaking in deletion / insertion, the randomised copy")

    def validate(self) -> None:
        self.method = canonical_method(self.method)
        if self.teacher_method is not None:
            self.teacher_method = canonical_method(self.teacher_method)
        if self.cam_layers not in CAM_LAYER_POLICIES:
            raise ExplainError(f"cam_layers: got {self.cam_layers!r}, expected one of {', '.join(CAM_LAYER_POLICIES)}")
        if self.labels and TRUTH_LABELS in self.labels and len(self.labels) > 1:
            raise ExplainError(f"labels: {TRUTH_LABELS!r} stands alone (each image's true labels); got {self.labels}")
        for name in ("top_k", "batch_size", "steps", "background", "n_samples", "n_steps", "cam_min_size"):
            if getattr(self, name) < 1:
                raise ExplainError(f"{name}: got {getattr(self, name)}, expected at least 1")
        for name in ("overlays", "feature_grid", "occlusion_window", "occlusion_stride"):
            if getattr(self, name) < 0:
                raise ExplainError(f"{name}: got {getattr(self, name)}, expected 0 or more")
        if self.size is not None and not 8 <= self.size <= 2048:
            raise ExplainError(f"size: got {self.size}, expected 8..2048 pixels")

    def for_side(self, name: str) -> ExplainOptions:
        """The options side ``name`` (student, teacher) is explained with: the teacher's method may differ."""
        if name == "teacher" and self.teacher_method not in (None, self.method):
            return dataclasses.replace(self, method=self.teacher_method)
        return self


@dataclasses.dataclass
class ExplainSource:
    """What to explain: image files, or a split of the run's own data (the default) or of another dataset."""

    images: list[str] = option(factory=list, help="image files (PNG, JPEG, DICOM ...) instead of a dataset split")
    dataset: str | None = option(None, f"another dataset ({', '.join(DATASETS)}); "
                                       "None = the run's own data, rebuilt as it was trained on")
    root: str | None = option(None, "dataset folder; None = the run's own (with the run's dataset: its data, moved)")
    split: str | None = option(None, "split to explain: train, val, test (None = test)")
    limit: int = option(16, "images of the split to explain (a seeded subset)")
    teacher: str | None = option(None, "teacher run directory; None = the one the run records (skipped if gone)")
    student_only: bool = option(False, "explain the student alone, not beside the teacher its run records (the "
                                       "teacher's maps cost as much again or more)")

    def validate(self) -> None:
        if self.limit < 1:
            raise ExplainError(f"limit: got {self.limit}, expected at least 1")

    @property
    def from_dataset(self) -> bool:
        """Whether a dataset field was given (a split is explained rather than image files)."""
        return self.dataset is not None or self.root is not None or self.split is not None


@dataclasses.dataclass
class ExplainConfig:
    """``medistill explain``: what to explain (``source``) and how (``options``); every field is a flag."""

    source: ExplainSource = option(factory=ExplainSource, help="what to explain")
    options: ExplainOptions = option(factory=ExplainOptions, help="how to explain")

    def validate(self) -> None:
        s = self.source
        truth_labels = self.options.labels == [TRUTH_LABELS]
        if s.images and truth_labels:
            raise ExplainError(f"labels: {TRUTH_LABELS!r} needs a dataset split (image files have no labels)")
        if s.images and (s.from_dataset or self.options.with_truth):
            raise ExplainError("images: cannot be combined with dataset, root, split or with_truth (--images "
                               "explains files; the others a dataset split)")
        if not s.images and not s.from_dataset and not self.options.with_truth:
            raise ExplainError("no images: pass --images FILE ... or --split S (the run's own data), or "
                               "--dataset D --root DIR --split S")
