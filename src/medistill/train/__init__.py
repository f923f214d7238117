"""Training and distillation (``medistill train`` / ``medistill distill``)."""

from .loop import Callbacks, TrainingError, predict, run_training
from .teacher import DistillError, adapt_input, load_teacher

__all__ = ["Callbacks", "DistillError", "TrainingError", "adapt_input", "load_teacher", "predict", "run_training"]
