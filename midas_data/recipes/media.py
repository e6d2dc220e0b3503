"""Reading and preprocessing media files: WAV to kaldi fbank, JPEG frames, feature arrays.

Every reader raises :class:`~midas_data.errors.MidasDataError` naming the file and what
was expected, so that a bad file deep inside a DataLoader worker is easy to find.
soundfile, torchaudio and pillow are imported where used (the ``audio`` and ``vision``
extras). Arrays are read with ``allow_pickle=False``: no data file is ever unpickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MidasDataError

__all__ = [
    "FBANK_MEAN",
    "FBANK_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "read_wav",
    "kaldi_fbank",
    "read_image",
    "pick_frames",
    "read_array",
    "probe",
]

# AudioSet fbank statistics, the normalisation the paper's code applies to every clip.
FBANK_MEAN, FBANK_STD = -4.503877, 5.141276
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FLOW_MEAN, FLOW_STD = 0.1307, 0.3081  # the flow normalisation of the paper's UCF-101 code


def read_wav(path: Path) -> tuple[torch.Tensor, int]:
    """``(waveform [N] float32 mono, sample_rate)``; several channels are averaged."""
    try:
        import soundfile
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("reading WAV files needs soundfile: pip install 'midas-data[audio]'") from err
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types for bad files
        raise MidasDataError(f"{path}: cannot read as audio ({err}); expected a WAV file") from err
    if data.shape[0] == 0:
        raise MidasDataError(f"{path}: the audio has no samples; expected a non-empty WAV file")
    return torch.from_numpy(np.ascontiguousarray(data.mean(axis=1))), int(rate)


def kaldi_fbank(
    waveform: torch.Tensor, sample_rate: int, mel_bins: int, frames: int, name: str = "audio"
) -> torch.Tensor:
    """Log mel filter banks ``[1, frames, mel_bins]`` of a mono waveform, the paper's input.

    Kaldi-compatible fbank (25 ms Hanning windows every 10 ms, no dither), cut or
    zero-padded to ``frames`` frames, then normalised with the AudioSet statistics (so the
    padding is ``-mean / (2 std)``, as in the paper's code).
    """
    from torchaudio.compliance import kaldi

    window = int(sample_rate * 0.025)
    if waveform.numel() < window:
        raise MidasDataError(
            f"{name}: {waveform.numel()} samples at {sample_rate} Hz; expected at least one 25 ms window ({window})"
        )
    centred = (waveform - waveform.mean()).unsqueeze(0)
    bank = kaldi.fbank(
        centred,
        htk_compat=True,
        sample_frequency=float(sample_rate),
        use_energy=False,
        window_type="hanning",
        num_mel_bins=mel_bins,
        dither=0.0,
        frame_shift=10.0,
    )
    if bank.shape[0] >= frames:
        bank = bank[:frames]
    else:
        bank = torch.cat([bank, bank.new_zeros(frames - bank.shape[0], mel_bins)])
    return ((bank - FBANK_MEAN) / (2 * FBANK_STD)).unsqueeze(0)


def read_image(path: Path, size: int, mode: str = "RGB", flip: bool = False) -> torch.Tensor:
    """An image ``[C, size, size]`` float32 normalised (ImageNet statistics for RGB, the
    flow statistics for one grey channel), optionally mirrored left to right."""
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("reading images needs pillow: pip install 'midas-data[vision]'") from err
    try:
        with Image.open(path) as image:
            image = image.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except Exception as err:  # pillow raises several types for bad files
        raise MidasDataError(f"{path}: cannot read as an image ({err}); expected a JPEG or PNG file") from err
    tensor = torch.from_numpy(array.copy())
    tensor = tensor.permute(2, 0, 1) if tensor.dim() == 3 else tensor.unsqueeze(0)
    if flip:
        tensor = tensor.flip(-1)
    if mode == "RGB":
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (tensor - mean) / std
    return (tensor - FLOW_MEAN) / FLOW_STD


def pick_frames(available: int, count: int, train: bool) -> list[int]:
    """Indices of ``count`` frames out of ``available``: one per equal segment, its middle
    for evaluation and a random one for training. Fewer frames than ``count`` repeat."""
    if available < 1:
        raise ValueError("available: expected at least one frame")
    segment = max(available // count, 1)
    picks = []
    for i in range(count):
        if train:
            offset = int(torch.randint(segment, ()).item())
        else:
            offset = segment // 2
        picks.append(min(i * segment + offset, available - 1))
    return picks


def read_array(path: Path, length: int | None = None) -> torch.Tensor:
    """A float32 array from ``.npy`` (never unpickled): ``[T, D]`` cut or zero-padded to
    ``length`` steps, or ``[D]`` as one step."""
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises several types for bad files
        raise MidasDataError(f"{path}: cannot read as a .npy array ({err}); expected a numeric array [T, D]") from err
    if array.dtype.kind not in "fiu" or array.ndim not in (1, 2) or array.size == 0:
        raise MidasDataError(
            f"{path}: expected a non-empty numeric array [T, D] or [D], got {array.dtype} {array.shape}"
        )
    tensor = torch.from_numpy(np.asarray(array, dtype=np.float32))
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if not bool(torch.isfinite(tensor).all()):
        raise MidasDataError(f"{path}: contains NaN or inf; expected finite features")
    if length is not None:
        if tensor.shape[0] >= length:
            tensor = tensor[:length]
        else:
            tensor = torch.cat([tensor, tensor.new_zeros(length - tensor.shape[0], tensor.shape[1])])
    return tensor


def probe(path: Path) -> str | None:
    """Why ``path`` cannot be read (a short reason), or ``None``. Reads headers only where
    the format allows: a cheap check of every file before a long run."""
    suffix = path.suffix.lower()
    try:
        if not path.is_file():
            return "missing"
        if path.stat().st_size == 0:
            return "empty file"
        if suffix == ".wav":
            import soundfile

            info: Any = soundfile.info(str(path))
            return None if info.frames > 0 else "no audio samples"
        if suffix in (".jpg", ".jpeg", ".png"):
            from PIL import Image

            with Image.open(path) as image:
                image.verify()
            return None
        if suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            return None if array.dtype.kind in "fiu" and array.ndim in (1, 2) and array.size else "not a numeric [T, D]"
        if suffix == ".txt":
            path.read_text(encoding="utf-8")
            return None
    except Exception as err:  # any failure to read means unreadable
        return f"{type(err).__name__}: {err}"
    return None


def probe_all(paths: Sequence[Path]) -> str | None:
    """The first problem among ``paths`` as ``"path: reason"``, or ``None``."""
    for path in paths:
        reason = probe(path)
        if reason is not None:
            return f"{path}: {reason}"
    return None
