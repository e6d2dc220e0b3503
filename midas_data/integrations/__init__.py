"""Thin adapters that put MIDAS into third-party trainers (floor 4).

* :mod:`midas_data.integrations.lightning` — ``MidasCallback`` for PyTorch Lightning
  (extra ``midas-data[lightning]``).
* :mod:`midas_data.integrations.transformers` — ``MidasTrainer``, a Hugging Face
  ``transformers.Trainer`` (extra ``midas-data[transformers]``).
* :mod:`midas_data.integrations.step` — the framework-free step both use: run the model,
  check its output against the protocol, compute the MIDAS loss.

Importing this package imports no trainer; each adapter imports its own.
"""

from .step import check_output, midas_loss

__all__ = ["check_output", "midas_loss"]
