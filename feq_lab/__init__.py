"""feq-lab: an ablation lab for EQTransformer-style earthquake detectors and P/S pickers."""

__version__ = "0.1.0"
