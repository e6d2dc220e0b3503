"""CREMA-D: audio-visual emotion recognition, 6 classes, 7,442 clips of 91 actors.

Layout (``ROOT``)::

    AudioWAV/1001_DFA_ANG_XX.wav          one WAV per clip
    Image-01-FPS/1001_DFA_ANG_XX/*.jpg    the clip's frames (also accepted: visual_frames/)

The label is the third field of the file name (``ACTOR_SENTENCE_EMOTION_LEVEL``):
ANG, DIS, FEA, HAP, NEU, SAD (class ids in this order). Audio: kaldi fbank, 128 mel bins,
1,024 frames; video: 3 frames, 224 x 224, one per equal segment of the clip's frames.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import MidasDataError
from .common import Reader, Recipe, Sample, Scan, finish_scan, list_frames, require_dirs
from .config import RecipeConfig
from .encoders import FrameEncoder, SpectrogramEncoder
from .readers import FbankReader, FramesReader

__all__ = ["CLASSES", "RECIPE", "scan", "audio_video_readers", "audio_video_encoders"]

CLASSES = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
CLIP_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]+)_([A-Z]{2})$")
FRAME_FOLDERS = ("Image-01-FPS", "visual_frames")
LAYOUT = "AudioWAV/<ACTOR>_<SENTENCE>_<EMOTION>_<LEVEL>.wav + Image-01-FPS/<same name>/*.jpg"


def _sample(wav: Path, frames: Path, label: int) -> Sample:
    return Sample(wav.stem, label, {"audio": (wav,), "video": list_frames(frames)})


def scan(root: str | Path, config: RecipeConfig, *, skip_unreadable: bool = False, check_media: bool = False) -> Scan:
    root = Path(root)
    audio = require_dirs(root, ["AudioWAV"], "CREMA-D", LAYOUT)["AudioWAV"]
    frame_root = next((root / name for name in FRAME_FOLDERS if (root / name).is_dir()), None)
    if frame_root is None:
        raise MidasDataError(f"{root / FRAME_FOLDERS[0]}: missing folder; expected the CREMA-D layout {LAYOUT}")
    candidates = []
    for wav in sorted(p for p in audio.iterdir() if not p.name.startswith(".")):
        if wav.suffix.lower() != ".wav":
            raise MidasDataError(f"{wav}: unexpected file; expected only .wav files in {audio}")
        match = CLIP_NAME.match(wav.stem)
        if match is None:
            raise MidasDataError(
                f"{wav}: the file name does not parse; expected ACTOR_SENTENCE_EMOTION_LEVEL.wav, "
                "e.g. 1001_DFA_ANG_XX.wav"
            )
        emotion = match.group(3)
        if emotion not in CLASSES:
            raise MidasDataError(f"{wav}: emotion {emotion!r} is not in the class list; expected one of {CLASSES}")
        candidates.append(partial(_sample, wav, frame_root / wav.stem, CLASSES.index(emotion)))
    if not candidates:
        raise MidasDataError(f"{audio}: no .wav files; expected the CREMA-D layout {LAYOUT}")
    return finish_scan(candidates, list(CLASSES), skip_unreadable, check_media)


def audio_video_readers(config: RecipeConfig, tokenizer: Any = None) -> dict[str, Reader]:
    return {
        "audio": FbankReader(config.mel_bins, config.audio_frames),
        "video": FramesReader(config.video_frames, config.image_size),
    }


def audio_video_encoders(config: RecipeConfig, item: Mapping[str, Any], tokenizer: Any = None) -> dict[str, nn.Module]:
    return {"audio": SpectrogramEncoder(config.resnet_width), "video": FrameEncoder(3, config.resnet_width)}


RECIPE = Recipe("cremad", "CREMA-D", LAYOUT, scan, audio_video_readers, audio_video_encoders)
