"""One builder for EQT, LEQ and FEQ1–3 (REFERENCE §5): presets in conf/model/*.yaml."""

from feq_lab.models.compile import InferenceModel, InferenceOptions, compile_for_inference
from feq_lab.models.options import ModelOptions
from feq_lab.models.params import count_parameters, parameter_report
from feq_lab.models.picker import (
    PickerModel,
    build_model,
    load_checkpoint,
    mc_dropout,
    mc_predict,
    save_checkpoint,
)
from feq_lab.models.spec import ModelSpec, available_presets, load_preset, spec_from_config

PRESETS = ("eqt", "leq", "feq1", "feq2", "feq3")

__all__ = [
    "PRESETS",
    "InferenceModel",
    "InferenceOptions",
    "ModelOptions",
    "ModelSpec",
    "PickerModel",
    "available_presets",
    "build_model",
    "compile_for_inference",
    "count_parameters",
    "load_checkpoint",
    "load_preset",
    "mc_dropout",
    "mc_predict",
    "parameter_report",
    "save_checkpoint",
    "spec_from_config",
]
