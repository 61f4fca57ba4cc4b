"""Typed, validated study configuration, in three parts: the schema (`sections`, `evaluation`, `study`), its
loading (`loading`: YAML files with `extends:`, `--set key=value` overrides, errors) and the views of a study
(`views`: folders, stage hashes, units). Everything is imported from here: `from mvc.config import load_config`."""

from mvc.config.evaluation import ClassifyConfig, MetricsConfig, ReportConfig, SelectConfig
from mvc.config.loading import ConfigError, config_to_yaml, load_config, with_values
from mvc.config.sections import (
    BackboneConfig,
    CaptionConfig,
    DataConfig,
    FinetuneConfig,
    GenerateConfig,
    GenerationMixingConfig,
    MethodName,
    MixingConfig,
    MixMode,
    Section,
    SurrogateConfig,
    TextConfig,
    TextualInversionConfig,
    TrainingMixingConfig,
)
from mvc.config.study import STUDY_NAME, StudyConfig

__all__ = [
    "STUDY_NAME", "BackboneConfig", "CaptionConfig", "ClassifyConfig", "ConfigError", "DataConfig", "FinetuneConfig",
    "GenerateConfig", "GenerationMixingConfig", "MethodName", "MetricsConfig", "MixMode", "MixingConfig",
    "ReportConfig", "Section", "SelectConfig", "StudyConfig", "SurrogateConfig", "TextConfig", "TextualInversionConfig",
    "TrainingMixingConfig",
    "config_to_yaml", "load_config", "with_values",
]
