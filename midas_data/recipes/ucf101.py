"""UCF-101: action recognition from RGB frames and optical flow, 101 classes.

Layout (``ROOT``)::

    rgb/<class>/<video>/*.jpg         RGB frames
    flow_u/<class>/<video>/*.jpg      horizontal flow, one grey image per frame
    flow_v/<class>/<video>/*.jpg      vertical flow, the same number of images as flow_u
    classes.txt                       optional: the class list (UCF-101's classInd.txt works)

Inputs: 3 RGB frames ``[3, 3, 224, 224]`` and 3 flow frames of two channels (u, v)
``[2, 3, 224, 224]``, each a 2-D ResNet-18 over frames with the mean over time.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import MidasDataError
from .common import Reader, Recipe, Sample, Scan, class_items, finish_scan, list_frames, read_class_list, require_dirs
from .config import RecipeConfig
from .encoders import FrameEncoder
from .readers import FlowReader, FramesReader

__all__ = ["RECIPE", "scan"]

LAYOUT = "rgb/<class>/<video>/*.jpg + flow_u/<class>/<video>/*.jpg + flow_v/<class>/<video>/*.jpg"


def _sample(rgb: Path, flow_u: Path, flow_v: Path, label: int) -> Sample:
    u, v = list_frames(flow_u), list_frames(flow_v)
    if len(u) != len(v):
        raise MidasDataError(f"{flow_v}: {len(v)} frames but {flow_u} has {len(u)}; expected one v frame per u frame")
    return Sample(f"{rgb.parent.name}/{rgb.name}", label, {"rgb": list_frames(rgb), "flow": u + v})


def scan(root: str | Path, config: RecipeConfig, *, skip_unreadable: bool = False, check_media: bool = False) -> Scan:
    root = Path(root)
    dirs = require_dirs(root, ["rgb", "flow_u", "flow_v"], "UCF-101", LAYOUT)
    classes = read_class_list(root, dirs["rgb"])
    candidates = []
    for label, video in class_items(dirs["rgb"], classes, None):
        relative = Path(video.parent.name) / video.name
        candidates.append(partial(_sample, video, dirs["flow_u"] / relative, dirs["flow_v"] / relative, label))
    return finish_scan(candidates, classes, skip_unreadable, check_media)


def readers(config: RecipeConfig, tokenizer: Any = None) -> dict[str, Reader]:
    return {
        "rgb": FramesReader(config.video_frames, config.image_size),
        "flow": FlowReader(config.video_frames, config.image_size),
    }


def encoders(config: RecipeConfig, item: Mapping[str, Any], tokenizer: Any = None) -> dict[str, nn.Module]:
    return {"rgb": FrameEncoder(3, config.resnet_width), "flow": FrameEncoder(2, config.resnet_width)}


RECIPE = Recipe("ucf101", "UCF-101", LAYOUT, scan, readers, encoders)
