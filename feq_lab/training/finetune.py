"""Fine-tuning: start a run from a parent's weights (`init_from=`), optionally with whole report
sections frozen (`freeze=[encoder, ...]`), and say where the weights came from (`Lineage`).

Why the parent's architecture wins over `model=`: a fine-tune continues *that* network — a
registered champion may be any family or grid variant, and SeisBench's EQTransformer differs from
the lab's `eqt` preset in a crop — so the run builds what the parent is and records that as its
effective config. `init_from` can name
- a registered model: `models:/NAME@ALIAS` (the lab's pyfunc models, any family);
- a lab checkpoint (`.pt` written by `models.save_checkpoint`, any family, either format);
- a SeisBench weights pair (`<base>.pt` + `<base>.json` of EQTransformer or PhaseNet).
The run is tagged `feq.parent_model` (registry `NAME/VERSION`, or the file path),
`feq.parent_run` (the registered version's run) and `feq.init_from` (as given).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from feq_lab.errors import ConfigError, DataError
from feq_lab.models import LearnedModel, load_checkpoint
from feq_lab.models.checkpoint import read_checkpoint
from feq_lab.models.protocol import SECTIONS

log = logging.getLogger(__name__)

TAG_PARENT_MODEL = "feq.parent_model"
TAG_PARENT_RUN = "feq.parent_run"
TAG_INIT_FROM = "feq.init_from"
REGISTRY_PREFIX = "models:/"


@dataclass(frozen=True)
class Lineage:
    """Where a run's starting weights came from."""

    init_from: str  # as the config gave it
    parent_model: str  # registry NAME/VERSION, or the resolved file path
    parent_run: str | None = None  # the registered version's MLflow run

    @property
    def short(self) -> str:
        """The parent as a table row names it: NAME/VERSION, or the file's name."""
        registry = self.init_from.startswith(REGISTRY_PREFIX)
        return self.parent_model if registry else Path(self.parent_model).name

    def tags(self) -> dict[str, str]:
        tags = {TAG_INIT_FROM: self.init_from, TAG_PARENT_MODEL: self.parent_model}
        if self.parent_run:
            tags[TAG_PARENT_RUN] = self.parent_run
        return tags


def load_parent(init_from: str, tracking_uri: str | None) -> tuple[LearnedModel, Lineage]:
    """The parent model (train mode, ready to fine-tune) and its lineage."""
    source = str(init_from)
    if source.startswith(REGISTRY_PREFIX):
        return _from_registry(source, tracking_uri)
    path = Path(source)
    candidates = [path, path.with_name(path.name + ".pt")]
    if not any(p.is_file() for p in candidates):
        raise ConfigError("init_from", f"{source!r}: no such file, and not a registry URI "
                          f"({REGISTRY_PREFIX}NAME@ALIAS)")
    if path.suffix == ".pt" and _is_lab_checkpoint(path):
        model = load_checkpoint(path)
    else:
        from feq_lab.models import from_seisbench  # seisbench is imported only when needed

        model = from_seisbench(path)
    return model.train(), Lineage(source, str(path.resolve()))


def _is_lab_checkpoint(path: Path) -> bool:
    try:
        read_checkpoint(path)
    except DataError:
        return False
    return True


def _from_registry(uri: str, tracking_uri: str | None) -> tuple[LearnedModel, Lineage]:
    from feq_lab.tracking.pyfunc import model_files
    from feq_lab.tracking.registry import Registry

    if not tracking_uri:
        raise ConfigError("tracking.uri", f"init_from={uri} needs a tracking store")
    name, _, alias = uri[len(REGISTRY_PREFIX):].partition("@")
    if not name or not alias:
        raise ConfigError("init_from", f"{uri!r}: expected {REGISTRY_PREFIX}NAME@ALIAS "
                          f"(e.g. {REGISTRY_PREFIX}feq-picker@champion)")
    try:
        files = Registry(str(tracking_uri)).download(name, alias)
    except ConfigError as exc:
        raise ConfigError("init_from", str(exc)) from exc
    checkpoint, _ = model_files(files.directory)
    model = load_checkpoint(checkpoint).train()
    return model, Lineage(uri, f"{name}/{files.version}", files.run_id)


def freeze_sections(model: LearnedModel, sections: Sequence[str]) -> list[str]:
    """Stop gradients to every parameter of the named report sections; returns them.

    BatchNorm layers inside a frozen section keep updating their running statistics in training
    mode (only their weights are fixed)."""
    names = [str(s) for s in sections or ()]
    owned = model.section_modules()
    for name in names:
        if name not in SECTIONS:
            raise ConfigError("freeze", f"unknown section {name!r}; expected some of "
                              f"{', '.join(SECTIONS)}")
        if not owned.get(name):
            raise ConfigError("freeze", f"{model.name} has no {name} section")
        for module in owned[name]:
            for p in module.parameters():
                p.requires_grad_(False)
    if names and not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("freeze", "every section is frozen: nothing left to train")
    return names
