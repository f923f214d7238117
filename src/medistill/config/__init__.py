"""Typed configuration: plain YAML data loaded into dataclasses (``yaml.safe_load`` only; YAML never imports or
calls code); unknown keys are errors naming the valid ones.

The machinery for any options dataclass (:func:`option`, :func:`build`, coercion, validation, YAML, recipes) is
:mod:`medistill.config.core`; the configs of a training run (:class:`RunConfig` and its sections) are
:mod:`medistill.config.run`. Every name is importable from here.
"""

from .core import (RECIPES, ConfigError, build, check_choice, check_range, differences, field_help, flat_dict,
                   from_dict, leaf_fields, load_recipe, load_yaml, merge, option, recipe_names, to_dict, validate)
from ..datasets import DATASETS  # the dataset registry's names, importable from here as before
from .run import FLAG_ALIASES, NOT_RECIPE, DataConfig, DistillConfig, ModelConfig, RunConfig, TrainConfig

__all__ = ["DATASETS", "FLAG_ALIASES", "NOT_RECIPE", "RECIPES", "ConfigError", "DataConfig", "DistillConfig",
           "ModelConfig", "RunConfig", "TrainConfig", "build", "check_choice", "check_range", "differences",
           "field_help", "flat_dict", "from_dict", "leaf_fields", "load_recipe", "load_yaml", "merge", "option",
           "recipe_names", "to_dict", "validate"]
