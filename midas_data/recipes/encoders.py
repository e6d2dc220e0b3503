"""Encoders of the recipes: ResNet-18 for spectrograms, frames and flow; small ones for
text tokens and feature sequences. All are trained from scratch unless the user gives a
local weights file (``--pretrained MODALITY=PATH``); nothing is downloaded.

The ResNet-18 here is the standard 18-layer residual network (a 7x7 stride-2 stem, max
pooling, four stages of two basic blocks with 64, 128, 256 and 512 channels, global
average pooling), written for this package with a configurable number of input channels.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["ResNet18", "SpectrogramEncoder", "FrameEncoder", "TokenEncoder", "SequenceEncoder", "load_weights"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut; the shortcut is a 1x1 convolution when the
    block changes the resolution or the width."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False),
            nn.BatchNorm2d(outputs),
            nn.ReLU(inplace=True),
            nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False),
            nn.BatchNorm2d(outputs),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNet18(nn.Module):
    """``[N, in_channels, H, W] -> [N, 8 * width]`` (``[N, 512]`` at the standard width 64;
    a narrower one only serves quick checks of a pipeline)."""

    def __init__(self, in_channels: int, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        ]
        previous = width
        for stage, channels in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if stage == 0 else 2
            layers += [BasicBlock(previous, channels, stride), BasicBlock(channels, channels, 1)]
            previous = channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = previous
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


class SpectrogramEncoder(nn.Module):
    """A ResNet-18 over a one-channel fbank ``[B, 1, frames, mel_bins]`` -> ``[B, 512]``."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.resnet = ResNet18(1, width)
        self.out_features = self.resnet.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"audio: expected an fbank batch [B, 1, frames, mel_bins], got {tuple(x.shape)}")
        return self.resnet(x)


class FrameEncoder(nn.Module):
    """A 2-D ResNet-18 over every frame, then the mean over time: ``[B, C, T, H, W] -> [B, 512]``."""

    def __init__(self, in_channels: int, width: int = 64) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.resnet = ResNet18(in_channels, width)
        self.out_features = self.resnet.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"frames: expected [B, {self.in_channels}, T, H, W], got {tuple(x.shape)}")
        batch, channels, time, height, width = x.shape
        frames = x.transpose(1, 2).reshape(batch * time, channels, height, width)
        return self.resnet(frames).view(batch, time, -1).mean(dim=1)


class TokenEncoder(nn.Module):
    """Token ids ``[B, L]`` (0 = padding) -> ``[B, dim]``: embeddings, a one-layer
    bidirectional GRU and the mean over the real tokens."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.rnn = nn.GRU(dim, dim // 2, batch_first=True, bidirectional=True)
        self.out_features = dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).unsqueeze(-1).to(self.embed.weight.dtype)
        states, _ = self.rnn(self.embed(ids))
        return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


class SequenceEncoder(nn.Module):
    """A feature stream ``[B, T, D]`` -> ``[B, dim]``: a linear projection, a one-layer GRU
    and its last state (the streams of CMU-MOSI are aligned, zero-padded at the end)."""

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.LayerNorm(in_features), nn.Linear(in_features, dim), nn.ReLU())
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.out_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, last = self.rnn(self.project(x))
        return last[-1]


def load_weights(encoder: nn.Module, path: str | Path, modality: str) -> None:
    """Load a local ``state_dict`` file into ``encoder`` (tensors only: ``weights_only``).

    A file made from a bare ResNet-18 (``conv1``-style names) will not match these names;
    convert it once to this encoder's names (``encoder.state_dict().keys()``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--pretrained {modality}={path}: no such file; expected a local state_dict file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(
            f"--pretrained {modality}={path}: {len(missing)} weights missing (first: {missing[:3]}); "
            f"unexpected keys: {unexpected[:3]}. Expected the keys of this encoder's state_dict"
        )
