"""Annotators: turn a photo into the control map a ControlNet was trained on.

- canny: OpenCV's Canny edge detector with A1111's default thresholds (100, 200); no weights.
- depth: a depth-estimation model through transformers' pipeline (Depth Anything, DPT, ...), from a
  local folder holding its config, weights and image processor; near is bright, as MiDaS maps are.
- openpose: controlnet_aux's OpenposeDetector (the CMU body-pose network ControlNet's openpose
  models were trained with), from a folder holding body_pose_model.pth; it draws the OpenPose-format
  skeleton map. Hands and faces are not drawn (A1111's "openpose" preprocessor, not "openpose_full").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import cv2
import numpy as np
import torch
from PIL import Image

from daguerre.engine.jobs import AuxiliarySpec

Annotate = Callable[[Image.Image], Image.Image]


@dataclass(frozen=True)
class Annotator:
    """A loaded annotator: the function, and the network it runs (which the auxiliary cache
    measures against its byte budget)."""

    annotate: Annotate
    model: torch.nn.Module

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.annotate(image)


CANNY_THRESHOLDS = (100, 200)
OPENPOSE_WEIGHTS = "body_pose_model.pth"
# A1111's default preprocessor resolution; smaller images are annotated at their own size.
DETECT_RESOLUTION = 512


def canny(image: Image.Image) -> Image.Image:
    edges = cv2.Canny(np.asarray(image.convert("RGB")), *CANNY_THRESHOLDS)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def load_depth(path: str, device: torch.device) -> Annotator:
    from transformers import pipeline

    estimator = pipeline("depth-estimation", model=path, device=device)

    def depth(image: Image.Image) -> Image.Image:
        # The depth-estimation pipeline's result is untyped: a dict whose "depth" is a PIL image.
        depth_map = cast(Image.Image, estimator(image.convert("RGB"))["depth"])
        return depth_map.convert("RGB").resize(image.size, Image.Resampling.BICUBIC)

    return Annotator(depth, estimator.model)


def load_openpose(path: str, device: torch.device) -> Annotator:
    # controlnet_aux's package import pulls in every annotator it ships (timm, ...); only here.
    from controlnet_aux.open_pose import OpenposeDetector
    from controlnet_aux.open_pose.body import Body

    # Body only: OpenposeDetector.to would also move the hand and face networks, which are not loaded.
    body = Body(str(Path(path) / OPENPOSE_WEIGHTS)).to(device)
    detector = OpenposeDetector(body)

    def openpose(image: Image.Image) -> Image.Image:
        resolution = min(DETECT_RESOLUTION, *image.size)
        # controlnet_aux is unannotated; with a PIL input the detector returns a PIL image.
        pose = cast(
            Image.Image, detector(image.convert("RGB"), detect_resolution=resolution, image_resolution=resolution)
        )
        return pose.resize(image.size, Image.Resampling.NEAREST)

    return Annotator(openpose, body.model)


_LOADERS: dict[str, Callable[[str, torch.device], Annotator]] = {"depth": load_depth, "openpose": load_openpose}


def load_annotator(spec: AuxiliarySpec, device: torch.device) -> Annotator:
    return _LOADERS[spec.kind](spec.path, device)
