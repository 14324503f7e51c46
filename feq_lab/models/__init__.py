"""Learned model families behind one protocol (`protocol.LearnedModel`): the EQT family
(EQT, LEQ, FEQ1–3, REFERENCE §5; `picker.PickerModel`) and PhaseNet (`phasenet.PhaseNet`);
presets in conf/model/*.yaml name their family by `_target_`."""

from feq_lab.models.checkpoint import load_checkpoint, save_checkpoint
from feq_lab.models.compile import InferenceModel, InferenceOptions, compile_for_inference
from feq_lab.models.options import ModelOptions
from feq_lab.models.params import count_parameters, parameter_report
from feq_lab.models.phasenet import PhaseNet
from feq_lab.models.picker import PickerModel, build_model, mc_dropout, mc_predict
from feq_lab.models.protocol import Detector, LearnedModel, OnnxSignature, instantiate
from feq_lab.models.spec import ModelSpec, available_presets, load_preset, spec_from_config

PRESETS = ("eqt", "leq", "feq1", "feq2", "feq3")
# SeisBench interop (`interop.py`) is imported on first use: importing seisbench takes ~5 s
# (measured on the 2-core VM), which every other user of feq_lab.models (the monitor's start-up,
# the CLI, each test process) would otherwise pay.
_LAZY = {"from_seisbench": "feq_lab.models.interop", "to_seisbench": "feq_lab.models.interop"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "Detector",
    "InferenceModel",
    "InferenceOptions",
    "LearnedModel",
    "ModelOptions",
    "ModelSpec",
    "OnnxSignature",
    "PhaseNet",
    "PickerModel",
    "available_presets",
    "build_model",
    "compile_for_inference",
    "count_parameters",
    "from_seisbench",
    "instantiate",
    "load_checkpoint",
    "load_preset",
    "mc_dropout",
    "mc_predict",
    "parameter_report",
    "save_checkpoint",
    "spec_from_config",
    "to_seisbench",
]
