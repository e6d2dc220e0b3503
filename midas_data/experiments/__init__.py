"""Experiments: what the demo and ``benchmarks/`` train and compare, outside the library core.

A small training and evaluation toolkit. It trains a
:class:`~midas_data.models.LateFusionClassifier` with one of several methods, all fed the
same :func:`~midas_data.midas_loader` batches (the baselines ignore the pair plan),
evaluates on aligned and on misaligned samples every epoch, and keeps the checkpoint with
the best *validation* accuracy; the caller touches the test split once.

One concept a file: ``datasets.py`` (in-memory splits), ``encoders.py`` (small encoders
and the model), ``config.py`` (the budget), ``method.py`` (the method protocol and joint
training), ``mixup.py`` and ``ogm_ge.py`` (baselines), ``midas_method.py`` (MIDAS and its
prioritised-sampler variants), ``registry.py`` (methods by name), ``evaluation.py``
(including the BatchNorm protocols of evaluation), ``fit.py`` (the loop), ``metrics.py``,
``paired.py`` (paired per-seed differences with t-intervals), ``imbalance.py`` (the
imbalance check: will MIDAS help this data?), ``report.py`` (plots and summaries) and
``demo/`` (the offline demo data). Nothing in the library core imports this package.
"""

from .config import TrainConfig
from .datasets import InMemoryDataset, cache_dataset
from .encoders import audio_encoder, build_model, conv_image_encoder, image_encoder
from .evaluation import (
    BN_PROTOCOLS,
    Predictions,
    evaluate,
    evaluate_multilabel,
    headline,
    misaligned_logits,
    misaligned_plan,
    multilabel_metrics,
    predict,
    reestimate_batchnorm,
    with_bn_protocol,
)
from .fit import FitResult, RunResult, fit, run
from .imbalance import ImbalanceReport, ModalityCheck, check_imbalance, plot_imbalance
from .method import JointTraining, Method, UnimodalTraining
from .midas_method import InputLevelMidasMethod, MidasMethod, PrioritisedMidasMethod
from .mixup import FeatureMixup, mixup_lambda
from .ogm_ge import OGMGE, ogm_coefficients
from .paired import paired_difference, verdict
from .registry import METHODS, make_method

__all__ = [
    "InMemoryDataset",
    "cache_dataset",
    "image_encoder",
    "conv_image_encoder",
    "audio_encoder",
    "build_model",
    "TrainConfig",
    "Method",
    "JointTraining",
    "UnimodalTraining",
    "FeatureMixup",
    "mixup_lambda",
    "OGMGE",
    "ogm_coefficients",
    "MidasMethod",
    "InputLevelMidasMethod",
    "PrioritisedMidasMethod",
    "METHODS",
    "make_method",
    "Predictions",
    "predict",
    "misaligned_plan",
    "misaligned_logits",
    "evaluate",
    "evaluate_multilabel",
    "multilabel_metrics",
    "headline",
    "BN_PROTOCOLS",
    "reestimate_batchnorm",
    "with_bn_protocol",
    "paired_difference",
    "verdict",
    "FitResult",
    "fit",
    "RunResult",
    "run",
    "check_imbalance",
    "ImbalanceReport",
    "ModalityCheck",
    "plot_imbalance",
]
