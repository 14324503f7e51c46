"""Plain run records: what selection and reports consume, free of any MLflow type."""

from __future__ import annotations

from dataclasses import dataclass, field


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
