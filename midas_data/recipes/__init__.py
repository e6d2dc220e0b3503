"""Recipes for the paper's datasets and ``python -m midas_data reproduce``.

One file per dataset layout (``cremad.py``, ``kinetics_sounds.py``, ``ucf101.py``,
``food101.py``, ``mosi.py``, ``mosei.py``, ``mmimdb.py``): how to find the samples under a
root, read and preprocess them as the paper does, and which encoders to train. ``config.py`` holds the paper's
hyper-parameters per dataset, ``split.py`` the 70/10/20 stratified re-split,
``encoders.py`` ResNet-18 and the small encoders, ``train.py`` the training run with
checkpoints and resume, ``reproduce.py`` the command. docs/recipes.md gives each
dataset's tree and command.
"""

from . import cremad, food101, kinetics_sounds, mmimdb, mosei, mosi, ucf101
from .common import Recipe, RecipeDataset, Sample, Scan
from .config import CONFIGS, RecipeConfig, apply_overrides, recipe_config
from .split import stratified_split

RECIPES: dict[str, Recipe] = {
    module.RECIPE.name: module.RECIPE for module in (cremad, kinetics_sounds, ucf101, food101, mosi, mosei, mmimdb)
}

__all__ = [
    "RECIPES",
    "Recipe",
    "RecipeDataset",
    "Sample",
    "Scan",
    "CONFIGS",
    "RecipeConfig",
    "recipe_config",
    "apply_overrides",
    "stratified_split",
]
