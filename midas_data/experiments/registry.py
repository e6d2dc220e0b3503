"""Training methods by name, each built fresh from its hyper-parameters."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .method import JointTraining, Method, UnimodalTraining
from .midas_method import InputLevelMidasMethod, MidasMethod, PrioritisedMidasMethod
from .mixup import FeatureMixup
from .ogm_ge import OGMGE

__all__ = ["METHODS", "make_method", "MethodFactory"]


MethodFactory = Callable[[int, Sequence[str], Mapping[str, Any]], Method]


def _midas(name: str, **fixed: Any) -> MethodFactory:
    def factory(num_classes: int, modalities: Sequence[str], options: Mapping[str, Any]) -> Method:
        kwargs = {"warmup_epochs": options.get("warmup_epochs", 2), "lam": options.get("lam", 1.0), **fixed}
        policy = kwargs.pop("policy", None)
        if kwargs.pop("input_level", False):
            return InputLevelMidasMethod(num_classes, modalities, name=name, **kwargs)
        if policy is not None:
            # Only the options given: the defaults stay the method's (and the sampler's).
            names = {"sampler_floor": "floor", "sampler_importance_weights": "importance_weights"}
            sampler = {arg: options[key] for key, arg in names.items() if key in options}
            return PrioritisedMidasMethod(num_classes, modalities, policy, name, **sampler, **kwargs)
        return MidasMethod(num_classes, modalities, name=name, **kwargs)

    return factory


METHODS: dict[str, MethodFactory] = {
    "joint": lambda c, m, o: JointTraining(heads=False),
    "joint_heads": lambda c, m, o: JointTraining(heads=True),
    "mixup": lambda c, m, o: FeatureMixup(o.get("mixup_concentration", 1.0)),
    "ogm_ge": lambda c, m, o: OGMGE(o.get("ogm_alpha", 0.5)),
    "unimodal_image": lambda c, m, o: UnimodalTraining("image"),
    "unimodal_audio": lambda c, m, o: UnimodalTraining("audio"),
    "midas": _midas("midas"),
    "midas_input": _midas("midas_input", input_level=True),
    "midas_no_warmup": _midas("midas_no_warmup", warmup_epochs=0),
    "midas_no_weak": _midas("midas_no_weak", weak_modality_weighting=False),
    "midas_no_hard": _midas("midas_no_hard", hard_sample_weighting=False),
    "midas_sampler_hard": _midas("midas_sampler_hard", policy="hard"),
    "midas_sampler_weak": _midas("midas_sampler_weak", policy="weak_modality"),
}


def make_method(
    name: str, num_classes: int, modalities: Sequence[str], options: Mapping[str, Any] | None = None
) -> Method:
    """A fresh method by name (see :data:`METHODS`); ``options`` are its hyper-parameters."""
    if name not in METHODS:
        raise KeyError(f"method: unknown {name!r}; expected one of {sorted(METHODS)}")
    return METHODS[name](num_classes, modalities, dict(options or {}))
