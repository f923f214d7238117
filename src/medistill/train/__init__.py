"""Training and distillation (``medistill train`` / ``medistill distill``).

- :mod:`.loop`: :func:`run_training`, the epoch loop;
- :mod:`.setup`: data, student, teachers, objective and optimiser of a run, and the teacher-cache policy;
- :mod:`.distillation`: the objectives (hard loss, KDLoss against online or cached teachers);
- :mod:`.mixing`: mixup / CutMix and label smoothing; :mod:`.optim`: optimiser and schedule;
- :mod:`.checkpoint`: resume state and history; :mod:`.teacher`: loading teachers, cross-resolution inputs;
- :mod:`.distributed`: torchrun / DDP helpers.
"""

from ..evaluate.predict import predict
from .checkpoint import TrainingError
from .loop import Callbacks, run_training
from .teacher import DistillError, adapt_input, load_teacher

__all__ = ["Callbacks", "DistillError", "TrainingError", "adapt_input", "load_teacher", "predict", "run_training"]
