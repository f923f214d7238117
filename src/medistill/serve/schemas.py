"""Response schemas of ``medistill serve`` (they document ``/openapi.json``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from .upload import FIELD

PREVIEW_SIDE = 512  # longest side of the preview PNG returned with a prediction


class ErrorBody(BaseModel):
    error: str = Field(description="short code: upload_too_large, not_an_image, image_too_large, ...")
    detail: str = Field(description="what was wrong, and what was expected")


class LabelScore(BaseModel):
    label: str
    probability: float
    threshold: float = Field(description="the model's stored threshold for this label")
    positive: bool


class ImageInfo(BaseModel):
    format: str = Field(description="png, jpeg or dicom, as read from the content")
    width: int
    height: int
    channels: int = Field(description="1 (grayscale) or 3 (colour), as decoded")
    preview: str | None = Field(None, description=f"data:image/png;base64 URI of the decoded image, longest side "
                                                  f"at most {PREVIEW_SIDE} px (DICOM after windowing)")


class Timings(BaseModel):
    queued: float = Field(description="waiting for an inference slot")
    decode: float = Field(description="decoding and preprocessing the image")
    inference: float = Field(description="the ONNX Runtime run (logits and maps)")
    total: float = Field(description="from the request's start to the response, upload included")


class MapGrid(BaseModel):
    stride: list[float] = Field(description="(y, x): distance between cell centres, as a fraction of the image side")
    offset: list[float] = Field(description="(y, x): cell 0's centre, as a fraction of the image side (0: the first "
                                            "edge); cell i is centred on offset + stride * i")


class PredictResponse(BaseModel):
    file: str = Field(description="the uploaded file's name (base name)")
    model: str
    task: str = Field(description="multilabel (one sigmoid per label) or multiclass (softmax)")
    probabilities: dict[str, float] = Field(description="label -> probability, in the model's label order")
    ranking: list[LabelScore] = Field(description="every label, most probable first")
    positives: list[str] = Field(description="labels at or above their threshold (multiclass: the top label)")
    thresholds: dict[str, float]
    latency_ms: float = Field(description="model latency: the ONNX Runtime run, milliseconds")
    timings_ms: Timings
    image: ImageInfo
    maps: dict[str, list[list[float]]] | None = Field(
        None, description="label -> Grad-CAM map (h, w) in [0, 1] from the explain graph; null when the model has "
                          "none (export with --explain)")
    map_grid: MapGrid | None = Field(
        None, description="where the maps' cells sit on the image: draw a map bilinearly between these centres, "
                          "the edge cell's value beyond them (an even resize of an EfficientNet's or ResNet's map "
                          "points about half a cell off); null when there are no maps")
    warnings: list[str] = Field(
        default_factory=list, description="how the input is unlike the training images (colour against grayscale, "
                                          "or a mean intensity / contrast far from theirs), stored at export; "
                                          "[] when alike or when the model file holds no training statistics")


class InputSpec(BaseModel):
    size: int
    channels: int
    mean: list[float]
    std: list[float]
    intensity: str = Field(description="how pixel values become [0, 1] (medistill.data.images): the VOI window, "
                                       "else the range the bit depth allows")
    training_stats: dict[str, Any] | None = Field(
        None, description="the training images' input statistics (colour share, mean intensity and contrast)")


class Limits(BaseModel):
    max_upload_bytes: int
    max_pixels: int
    max_concurrency: int
    read_timeout_s: float = Field(description="a request must have arrived whole within this many seconds (408)")
    min_upload_rate: float = Field(0.0, description="an upload slower than this many bytes per second (averaged, "
                                                    "after a few seconds) is cut (408)")
    accepted: list[str]


class ModelResponse(BaseModel):
    name: str = Field(description="the model file's name")
    model: str = Field(description="architecture")
    task: str
    uses_thresholds: bool = Field(description="per-label thresholds call the positives (multi-label); false: the "
                                              "most probable class is the prediction (single-label)")
    labels: list[str]
    thresholds: dict[str, float]
    input: InputSpec
    maps: bool = Field(description="the graph outputs Grad-CAM maps")
    file_bytes: int
    parameters: int | None = Field(None, description="weights in the graph (None when onnx is not installed)")
    sha256: str
    version: str = Field(description="medistill version that exported the model")
    server_version: str
    provenance: dict[str, str] = Field(description="other medistill.* metadata (run, data, ...)")
    limits: Limits


class Health(BaseModel):
    status: str
    model: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a Host header this server does not answer for (DNS rebinding guard)"},
    408: {"model": ErrorBody, "description": "the request did not arrive whole within read_timeout_s, or "
                                                          "arrived slower than min_upload_rate"},
    413: {"model": ErrorBody, "description": "upload larger than max_upload_bytes, or image over max_pixels"},
    415: {"model": ErrorBody, "description": "not a multipart upload, or the file is not PNG, JPEG or DICOM"},
    422: {"model": ErrorBody, "description": "no or empty file field, malformed body, or an undecodable image"},
    429: {"model": ErrorBody, "description": "this client already has max_connections_per_client connections open"},
    503: {"model": ErrorBody, "description": "the server already has max_connections connections open"},
}
_FILE_SCHEMA = {"type": "string", "format": "binary",
                "description": "a PNG (8/16-bit), JPEG or DICOM image; the type is read from the content"}
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {
    "schema": {"type": "object", "required": [FIELD], "properties": {FIELD: _FILE_SCHEMA}}}}}}
