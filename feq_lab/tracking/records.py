"""Plain run records: what selection and reports consume, free of any MLflow type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RunRecord:
    """One tracked run as plain data (params are strings, as MLflow stores them)."""

    run_id: str
    name: str
    status: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifact_uri: str = ""

    @property
    def label(self) -> str:
        """A short human name for tables: the run name, else the model param, else the id."""
        return self.name or self.params.get("model", self.run_id[:8])


@dataclass
class RunResult:
    """What a job produced, as plain values for the one recorder (`Tracker.record`): flat metrics
    (MLflow keys, tracking/keys.py), tags, files by artifact folder, and the trained model's
    files (checkpoint, ONNX or None) that become the run's registrable pyfunc model."""

    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, list[Path]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    model: tuple[Path, Path | None] | None = None

    def add(self, folder: str, path: Path | None) -> None:
        if path is not None:
            self.artifacts.setdefault(folder, []).append(Path(path))
