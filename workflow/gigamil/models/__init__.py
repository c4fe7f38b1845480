"""MIL models: torchmil-style ABMIL/SmABMIL and the accumulating ``MILModel``."""

from gigamil.models.abmil import ABMIL, SmABMIL
from gigamil.models.factory import build_mil_model
from gigamil.models.mil import MILModel, TrainStep

__all__ = ["ABMIL", "MILModel", "SmABMIL", "TrainStep", "build_mil_model"]
