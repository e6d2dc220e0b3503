"""Training methods by name, each built fresh from its hyper-parameters."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .method import JointTraining, Method, UnimodalTraining
from .midas_method import InputLevelMidasMethod, MidasMethod, PrioritisedMidasMethod, PrunedJointTraining
from .mixup import FeatureMixup
from .ogm_ge import OGMGE

__all__ = ["METHODS", "PRUNED_METHODS", "make_method", "MethodFactory"]


MethodFactory = Callable[[int, Sequence[str], Mapping[str, Any]], Method]


def _midas(name: str, **fixed: Any) -> MethodFactory:
    def factory(num_classes: int, modalities: Sequence[str], options: Mapping[str, Any]) -> Method:
        kwargs = {"warmup_epochs": options.get("warmup_epochs", 2), "lam": options.get("lam", 1.0), **fixed}
        for key in ("pair_weighting", "task", "rule"):
            if key in options and key not in fixed:
                kwargs[key] = options[key]
        policy = kwargs.pop("policy", None)
        if kwargs.pop("input_level", False):
            return InputLevelMidasMethod(num_classes, modalities, name=name, **kwargs)
        if policy is not None:
            # Only the options given: the defaults stay the method's (and the sampler's).
            names = {"sampler_floor": "floor", "sampler_importance_weights": "importance_weights"}
            sampler = {arg: options[key] for key, arg in names.items() if key in options}
            sampler["prune"] = _prune_options(options)
            return PrioritisedMidasMethod(num_classes, modalities, policy, name, **sampler, **kwargs)
        return MidasMethod(num_classes, modalities, name=name, **kwargs)

    return factory


def _prune_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``prune_ratio``, ``prune_tail``, ``prune_score`` -> :class:`PrunePolicy` options."""
    return {
        key.removeprefix("prune_"): options[key]
        for key in ("prune_ratio", "prune_tail", "prune_score")
        if key in options
    }


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
    # A uniform MIDAS run that also records the stats table (the bad-pair read-out).
    "midas_table": _midas("midas_table", policy="uniform"),
    # The multi-label pairing rule beside the default "different_set" (benchmarks/multilabel_glyphs.py).
    "midas_disjoint": _midas("midas_disjoint", rule="disjoint"),
}

# Methods on pruned epochs (``policy="prune"``): MIDAS, and joint training alone. Kept apart
# from METHODS because their step loss is not one quantity from the first step to the last:
# a pruned epoch's batches hold fewer low-loss samples, weighted up, so its per-step loss is
# larger in expectation than a full epoch's (the epoch *sum* is what stays unbiased), and it
# drops back at the full-data tail. make_method builds them all the same.
PRUNED_METHODS: dict[str, MethodFactory] = {
    "midas_prune": _midas("midas_prune", policy="prune"),
    "joint_prune": lambda c, m, o: PrunedJointTraining(prune=_prune_options(o)),
}


def make_method(
    name: str, num_classes: int, modalities: Sequence[str], options: Mapping[str, Any] | None = None
) -> Method:
    """A fresh method by name (see :data:`METHODS` and :data:`PRUNED_METHODS`); ``options``
    are its hyper-parameters."""
    factories = {**METHODS, **PRUNED_METHODS}
    if name not in factories:
        raise KeyError(f"method: unknown {name!r}; expected one of {sorted(factories)}")
    return factories[name](num_classes, modalities, dict(options or {}))
