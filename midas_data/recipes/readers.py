"""Per-modality readers: a sample's files of one modality in, the model's input out.

Readers are small picklable classes (DataLoader workers receive them), each with the
preprocessing of the paper for its kind of file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import MidasDataError
from .media import kaldi_fbank, pick_frames, read_array, read_image, read_wav

__all__ = ["FbankReader", "FramesReader", "FlowReader", "TextReader", "ArrayReader", "ByteTokenizer"]


class FbankReader:
    """One WAV file -> kaldi fbank ``[1, frames, mel_bins]``."""

    def __init__(self, mel_bins: int, frames: int) -> None:
        self.mel_bins, self.frames = mel_bins, frames

    def __call__(self, files: Sequence[Path], train: bool) -> torch.Tensor:
        waveform, rate = read_wav(files[0])
        return kaldi_fbank(waveform, rate, self.mel_bins, self.frames, name=str(files[0]))


class FramesReader:
    """A clip's RGB frames -> ``[3, count, size, size]``: ``count`` frames, one per equal
    segment (random within it and mirrored at random for training, the middle otherwise)."""

    def __init__(self, count: int, size: int) -> None:
        self.count, self.size = count, size

    def __call__(self, files: Sequence[Path], train: bool) -> torch.Tensor:
        flip = train and bool(torch.rand(()) < 0.5)
        picks = pick_frames(len(files), self.count, train)
        return torch.stack([read_image(files[i], self.size, "RGB", flip) for i in picks], dim=1)


class FlowReader:
    """Optical flow as two grey images per frame (``u`` then ``v``) -> ``[2, count, size, size]``.

    ``files`` holds the ``u`` frames then the ``v`` frames, the same number of each.
    """

    def __init__(self, count: int, size: int) -> None:
        self.count, self.size = count, size

    def __call__(self, files: Sequence[Path], train: bool) -> torch.Tensor:
        half = len(files) // 2
        u_frames, v_frames = files[:half], files[half:]
        flip = train and bool(torch.rand(()) < 0.5)
        picks = pick_frames(half, self.count, train)
        frames = [
            torch.cat([read_image(u_frames[i], self.size, "L", flip), read_image(v_frames[i], self.size, "L", flip)])
            for i in picks
        ]
        return torch.stack(frames, dim=1)


class ByteTokenizer:
    """A tokenizer that needs no download: UTF-8 bytes shifted by one (0 is padding).

    A stand-in so that the Food-101 recipe runs anywhere; pass a real tokenizer for the
    paper's setup. ``vocab_size`` is 257.
    """

    vocab_size = 257

    def __call__(self, text: str) -> torch.Tensor:
        return torch.tensor([b + 1 for b in text.encode("utf-8")], dtype=torch.long)


class TextReader:
    """One ``.txt`` file -> token ids ``[length]`` (int64, 0-padded) through ``tokenizer``.

    ``tokenizer(text)`` may return ids as a tensor, a list, or a mapping with
    ``input_ids`` (a Hugging Face tokenizer's output); a leading batch axis of one is dropped.
    """

    def __init__(self, tokenizer: Callable[[str], Any], length: int) -> None:
        self.tokenizer, self.length = tokenizer, length

    def __call__(self, files: Sequence[Path], train: bool) -> torch.Tensor:
        try:
            text = files[0].read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise MidasDataError(f"{files[0]}: cannot read as UTF-8 text ({err}); expected a .txt file") from err
        return self.encode(text, files[0])

    def encode(self, text: str, path: Path) -> torch.Tensor:
        """``text`` -> token ids ``[length]``; ``path`` names the source in errors."""
        tokens = self.tokenizer(text)
        if isinstance(tokens, dict) or hasattr(tokens, "keys"):
            tokens = tokens["input_ids"]
        ids = torch.as_tensor(tokens, dtype=torch.long)
        if ids.dim() == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.dim() != 1:
            raise MidasDataError(f"{path}: the tokenizer returned shape {tuple(ids.shape)}; expected ids [L]")
        out = torch.zeros(self.length, dtype=torch.long)
        out[: min(self.length, ids.numel())] = ids[: self.length]
        return out


class ArrayReader:
    """One ``.npy`` feature stream -> ``[length, D]`` float32."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __call__(self, files: Sequence[Path], train: bool) -> torch.Tensor:
        return read_array(files[0], self.length)
