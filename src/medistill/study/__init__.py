"""``medistill study``: does distillation pay here, and how small can the student be? One resumable command that
trains a student family at several sizes with and without KD and answers both questions fairly.

- :mod:`.options`: :class:`StudyConfig` and the arms (training recipes) it compares, fixed before anything runs;
- :mod:`.plan`: data hygiene (``data inspect``'s grouping and near copies), the teacher, the sizes, every run's
  config, and ``plan.json`` (the rule, written before the first run; a later call with other settings is refused);
- :mod:`.runner`: :func:`~.runner.run_study`: the runs, several at once with ``jobs``, resumable at any point;
- :mod:`.results`: the scores, the arms chosen on validation, KD minus no-KD with its CI, the sentences;
- :mod:`.output`: ``study.json``, ``study.md``, ``frontier.png``, ``report.html``.

This package's top level is torch-free (the command line reads the options without torch); run a study with
``from medistill.study.runner import run_study`` or ``medistill.run_study``.
"""

from .options import ARMS, Arm, StudyConfig

__all__ = ["ARMS", "Arm", "StudyConfig"]
