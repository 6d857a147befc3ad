"""Typed configuration: dataclasses with defaults (``schema``), YAML files and dotted overrides
(``io``), validation (``validation``).

The sections and key names are those of the reference repository (data / logging / mask / meta /
optimization), so its YAML files load unchanged; our additions live in the same sections. Any
unknown or mistyped key is an error that names it and the closest valid key.
"""

from ..errors import ConfigError
from .io import apply_field_overrides, apply_overrides, from_dict, load_config, parse_yaml
from .schema import (
    DATASETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LOSSES,
    LR_SCALING,
    OBJECTIVES,
    SECTIONS,
    TARGETS,
    Config,
    DataConfig,
    LoggingConfig,
    MaskConfig,
    MetaConfig,
    OptimizationConfig,
)
from .validation import validate

__all__ = [
    "ConfigError",
    "apply_field_overrides",
    "apply_overrides",
    "from_dict",
    "load_config",
    "parse_yaml",
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LOSSES",
    "LR_SCALING",
    "OBJECTIVES",
    "SECTIONS",
    "TARGETS",
    "Config",
    "DataConfig",
    "LoggingConfig",
    "MaskConfig",
    "MetaConfig",
    "OptimizationConfig",
    "validate",
]
