"""Kinetics-Sounds: the audio-visual subset of Kinetics (31 classes in the paper).

Layout (``ROOT``)::

    audio/<class>/<clip>.wav
    visual/<class>/<clip>/*.jpg       the clip's frames
    classes.txt                       optional: the class list, one name a line

Without ``classes.txt`` the classes are the folders of ``audio/``, sorted. Preprocessing
as CREMA-D: kaldi fbank (128 mel bins, 1,024 frames) and 3 frames of 224 x 224.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..errors import MidasDataError
from .common import Recipe, Sample, Scan, class_items, finish_scan, list_frames, read_class_list, require_dirs
from .config import RecipeConfig
from .cremad import audio_video_encoders, audio_video_readers

__all__ = ["RECIPE", "scan"]

LAYOUT = "audio/<class>/<clip>.wav + visual/<class>/<clip>/*.jpg"


def _sample(wav: Path, frames: Path, label: int) -> Sample:
    return Sample(f"{wav.parent.name}/{wav.stem}", label, {"audio": (wav,), "video": list_frames(frames)})


def scan(root: str | Path, config: RecipeConfig, *, skip_unreadable: bool = False, check_media: bool = False) -> Scan:
    root = Path(root)
    dirs = require_dirs(root, ["audio", "visual"], "Kinetics-Sounds", LAYOUT)
    classes = read_class_list(root, dirs["audio"])
    for folder in sorted(p for p in dirs["visual"].iterdir() if p.is_dir()):
        if folder.name not in classes:
            raise MidasDataError(f"{folder}: class {folder.name!r} is not in the class list; expected one of {classes}")
    candidates = [
        partial(_sample, wav, dirs["visual"] / wav.parent.name / wav.stem, label)
        for label, wav in class_items(dirs["audio"], classes, ".wav")
    ]
    return finish_scan(candidates, classes, skip_unreadable, check_media)


RECIPE = Recipe("kinetics_sounds", "Kinetics-Sounds", LAYOUT, scan, audio_video_readers, audio_video_encoders)
