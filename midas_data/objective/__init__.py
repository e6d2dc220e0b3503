"""The MIDAS loss: :class:`MidasObjective` (``loss.py``) and the checks of one call
(``checks.py``)."""

from .loss import MidasObjective

__all__ = ["MidasObjective"]
