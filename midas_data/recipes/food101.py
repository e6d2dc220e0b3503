"""Food-101 (UPMC Food-101): recipe classification from a photo and its web page title.

Layout (``ROOT``)::

    images/<class>/<item>.jpg
    texts/<class>/<item>.txt          the title of the same item, UTF-8
    classes.txt                       optional: the class list

Image: 224 x 224 RGB, a ResNet-18 (the paper's is ImageNet-pretrained: give a local
weights file with ``--pretrained image=PATH``). Text: token ids from a tokenizer the user
supplies (``--tokenizer module:callable``; without one, UTF-8 bytes, which needs no
download), padded to ``text_length``, into a small recurrent encoder (the paper used
ELECTRA-small; see docs/recipes.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import MidasDataError
from .common import Reader, Recipe, Sample, Scan, class_items, finish_scan, read_class_list, require_dirs
from .config import RecipeConfig
from .encoders import FrameEncoder, TokenEncoder
from .readers import ByteTokenizer, FramesReader, TextReader

__all__ = ["RECIPE", "scan"]

LAYOUT = "images/<class>/<item>.jpg + texts/<class>/<item>.txt"


def _sample(image: Path, text: Path, label: int) -> Sample:
    if not text.is_file():
        raise MidasDataError(f"{text}: missing text file; expected the title of {image}")
    return Sample(f"{image.parent.name}/{image.stem}", label, {"image": (image,), "text": (text,)})


def scan(root: str | Path, config: RecipeConfig, *, skip_unreadable: bool = False, check_media: bool = False) -> Scan:
    root = Path(root)
    dirs = require_dirs(root, ["images", "texts"], "Food-101", LAYOUT)
    classes = read_class_list(root, dirs["images"])
    candidates = []
    for label, image in class_items(dirs["images"], classes, ".jpg"):
        text = dirs["texts"] / image.parent.name / (image.stem + ".txt")
        candidates.append(partial(_sample, image, text, label))
    return finish_scan(candidates, classes, skip_unreadable, check_media)


def readers(config: RecipeConfig, tokenizer: Any = None) -> dict[str, Reader]:
    # One frame: the image is a clip of length 1 for the frame encoder.
    return {
        "image": FramesReader(1, config.image_size),
        "text": TextReader(tokenizer or ByteTokenizer(), config.text_length),
    }


def encoders(config: RecipeConfig, item: Mapping[str, Any], tokenizer: Any = None) -> dict[str, nn.Module]:
    vocab = getattr(tokenizer or ByteTokenizer(), "vocab_size", None)
    if not isinstance(vocab, int):
        raise ValueError("tokenizer: expected a vocab_size attribute (int) to size the token embedding")
    return {"image": FrameEncoder(3, config.resnet_width), "text": TokenEncoder(vocab, config.feature_dim)}


RECIPE = Recipe("food101", "Food-101", LAYOUT, scan, readers, encoders)
