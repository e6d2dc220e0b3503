"""Small encoders for the demo's images and log-mel spectrograms, and a model built from them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..models import LateFusionClassifier

__all__ = ["image_encoder", "conv_image_encoder", "audio_encoder", "build_model"]


def image_encoder(feature_dim: int = 64, pixels: int = 64, dropout: float = 0.0) -> nn.Module:
    """An MLP for small grey images ``[B, 1, H, W]`` with ``H * W = pixels``.

    ``dropout`` on the pixels and the hidden layer; noisy images are easy to memorise.
    """
    return nn.Sequential(
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(pixels, 128),
        nn.BatchNorm1d(128),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(128, feature_dim),
        nn.ReLU(),
    )


def _conv_block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def conv_image_encoder(feature_dim: int = 64, width: int = 16) -> nn.Module:
    """A small CNN for grey images ``[B, 1, H, W]`` (28x28 in the demo).

    Three 3x3 convolution blocks with BatchNorm (``width``, ``2 width``, ``feature_dim``
    channels), max-pooling between them and global average pooling at the end: the
    largest encoder that keeps a 5-seed benchmark within an hour on two CPU cores.
    """
    return nn.Sequential(
        *_conv_block(1, width),
        nn.MaxPool2d(2),
        *_conv_block(width, 2 * width),
        nn.MaxPool2d(2),
        *_conv_block(2 * width, feature_dim),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


class _DropChannel(nn.Module):
    """``[B, 1, F, T] -> [B, F, T]``: mel bins become the channels of a 1-D convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"audio: expected a log-mel batch [B, 1, F, T], got {tuple(x.shape)}")
        return x.squeeze(1)


def audio_encoder(feature_dim: int = 64, n_mels: int = 32) -> nn.Module:
    """A small time-delay network for log-mel spectrograms ``[B, 1, n_mels, T]``.

    Three 1-D convolutions over time with the mel bins as channels, then max-pooling over
    time: the spoken word may sit anywhere in the clip.
    """
    return nn.Sequential(
        _DropChannel(),
        nn.Conv1d(n_mels, 64, 5, padding=2),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Conv1d(64, 64, 5, stride=2, padding=2),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Conv1d(64, feature_dim, 3, stride=2, padding=1),
        nn.BatchNorm1d(feature_dim),
        nn.ReLU(),
        nn.AdaptiveMaxPool1d(1),
        nn.Flatten(),
    )


def build_model(
    input_shapes: Mapping[str, Sequence[int]],
    num_classes: int,
    feature_dim: int = 64,
    seed: int | None = None,
    image_dropout: float = 0.0,
) -> LateFusionClassifier:
    """A late-fusion classifier with an encoder chosen per input shape.

    ``[1, H, W]`` with ``H * W <= 256`` gets :func:`image_encoder` (an MLP), a larger square
    ``[1, H, H]`` gets :func:`conv_image_encoder`, any other ``[1, F, T]`` (a log-mel
    spectrogram) gets :func:`audio_encoder`; anything else must be given its own encoder.
    """
    if seed is not None:
        torch.manual_seed(seed)
    encoders: dict[str, nn.Module] = {}
    for name, shape in input_shapes.items():
        shape = tuple(shape)
        if len(shape) != 3 or shape[0] != 1:
            raise ValueError(f"input_shapes[{name!r}]: expected [1, H, W], got {list(shape)}")
        pixels = shape[1] * shape[2]
        if pixels <= 256:
            encoders[name] = image_encoder(feature_dim, pixels, image_dropout)
        elif shape[1] == shape[2]:
            encoders[name] = conv_image_encoder(feature_dim)
        else:
            encoders[name] = audio_encoder(feature_dim, shape[1])
    return LateFusionClassifier(encoders, {m: feature_dim for m in encoders}, num_classes)
