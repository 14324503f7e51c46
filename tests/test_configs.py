"""Every config of every group composes (Hydra's compose API, as each entry point composes it),
what it configures is built, and every `_target_` instantiates (lightning-hydra-template's
tests/test_configs.py is the pattern). Plus: the presets' inheritance keeps each preset's
effective ModelSpec exactly as it was when FEQ1-3 were full copies, the grid knobs are declared
once, and DVC's training stages depend on every config file their preset is composed from."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from feq_lab.job.config import config_hash, effective_config
from feq_lab.job.run import plan_job
from feq_lab.models import PRESETS, Detector, LearnedModel, build_model, load_preset
from feq_lab.models.spec import GRID_KNOBS
from feq_lab.paths import CONF_DIR, PROJECT_ROOT

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "preset_specs.json"


def options(group: str) -> list[str]:
    """The options of a config group: its yaml files (not its subgroups)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose_cfg(primary: str, *overrides: str, hydra_cfg: bool = False) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(primary, overrides=list(overrides), return_hydra_config=hydra_cfg)


def targets(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every mapping below `node` (a plain container) that names a `_target_`."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, child in node.items():
            yield from targets(child, f"{path}.{key}" if path else str(key))


def locate(dotted: str) -> Any:
    """The object a `_target_` names (module path, then attributes)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def instantiate_all(cfg: DictConfig) -> int:
    """Instantiate each `_target_` of the project (the job's config and `hydra.callbacks`);
    Hydra's own launcher/sweeper nodes need a running Hydra, so their targets are only located.
    Returns how many were instantiated."""
    n = 0
    for path, node in targets(OmegaConf.to_container(cfg, resolve=False)):
        if path.startswith("hydra.") and not path.startswith("hydra.callbacks."):
            assert callable(locate(str(node["_target_"]))), path
            continue
        obj = instantiate(OmegaConf.create(node), _convert_="all")
        assert obj is not None, path
        n += 1
    return n


# --- the main job (conf/config.yaml): every group, each option planned (model built) --------

NEEDS_SOURCE = ("data.source=/nonexistent/dataset",)  # stead/seisbench need a path to plan


@pytest.mark.parametrize("group, option", [
    *[("model", o) for o in options("model")],
    *[("baseline", o) for o in options("baseline")],
    *[("data", o) for o in options("data")],
    *[("data/loader", o) for o in options("data/loader")],
    *[("data/augment", o) for o in options("data/augment")],
    *[("train", o) for o in options("train")],
    *[("trainer", o) for o in options("trainer")],
    *[("eval", o) for o in options("eval")],
    *[("experiment", o) for o in options("experiment")],
    *[("tracking", o) for o in options("tracking")],
    *[("hparams_search", o) for o in options("hparams_search")],
    *[("hydra/launcher", o) for o in options("hydra/launcher")],
])
def test_every_option_of_the_main_job_composes_plans_and_instantiates(group, option):
    extra = NEEDS_SOURCE if option in ("stead", "seisbench") or option == "paper" else ()
    if group == "experiment" and option == "paper":
        extra = ("data=stead", *NEEDS_SOURCE)
    cfg = compose_cfg("config", f"{group}={option}", *extra, hydra_cfg=True)
    if group.startswith("hydra/"):
        assert cfg.hydra.launcher._target_
    plan = plan_job(cfg)  # every check of the job, and the network built
    if group == "baseline" or (group == "model" and option == "stalta"):
        assert plan.kind == "stalta" and isinstance(plan.model, Detector) and plan.spec is None
    else:
        assert plan.kind == "learned" and isinstance(plan.model, LearnedModel)
        if group == "model":  # built from the preset's `_target_` (models/protocol.py)
            assert plan.spec["name"] == option and plan.spec["_target_"] == plan.model.target
    n = instantiate_all(cfg)
    assert n >= 1  # at least the MLflow sweep callback (hydra.callbacks)


@pytest.mark.parametrize("primary, overrides", [
    ("stream", ()),
    *[("stream", (f"source={o}",)) for o in options("source")],
    *[("stream", (f"model={o}",)) for o in PRESETS],
    ("select", ()),
    *[("select", (f"select={o}",)) for o in options("select")],
    ("profile", ()),
    *[("profile", (f"model={o}",)) for o in PRESETS],
    ("sweep", ()),
])
def test_every_other_entry_point_config_composes(primary, overrides):
    cfg = compose_cfg(primary, *overrides, hydra_cfg=True)
    instantiate_all(cfg)
    if primary == "stream" and cfg.get("model"):
        assert build_model(OmegaConf.to_container(cfg.model)).spec.name == overrides[0].split("=")[1]
        from feq_lab.streaming.engine import EngineConfig

        EngineConfig.from_mapping({**OmegaConf.to_container(cfg.engine),
                                   "thresholds": {"detection": 0.5, "p": 0.1, "s": 0.1}})
    if primary == "select":
        from feq_lab.selection.policy import refuse_test_keys

        refuse_test_keys(OmegaConf.to_container(cfg.select, resolve=True))
    if primary == "profile":
        from feq_lab.profile import check_config

        check_config(cfg)


# --- presets by inheritance ----------------------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_builds_exactly_the_spec_it_built_as_a_full_copy(preset):
    """tests/fixtures/preset_specs.json: each preset's ModelSpec recorded from the full-copy
    presets (before FEQ1-3 became LEQ deltas); composed by Hydra and read by load_preset alike."""
    before = json.loads(FIXTURE.read_text())[preset]
    assert build_model(preset).spec.to_dict() == before
    composed = compose_cfg("config", f"model={preset}")
    assert plan_job(composed).model.spec.to_dict() == before
    assert {**load_preset(preset)} == OmegaConf.to_container(composed.model)
    # FEQ1-3 inherit LEQ's family locator through the defaults list
    assert composed.model._target_ == "feq_lab.models.picker.PickerModel.from_config"


def test_feq_presets_are_leq_plus_the_fields_that_differ():
    leq = load_preset("leq")
    for name, differs in {"feq1": {"rnn", "picker_rnn"},
                          "feq2": {"cnn_blocks", "rnn", "rnn_blocks", "picker_rnn"},
                          "feq3": {"cnn_blocks", "rnn_blocks", "picker_rnn"}}.items():
        own = yaml.safe_load((CONF_DIR / "model" / f"{name}.yaml").read_text())
        assert own.pop("defaults") == ["leq", "_self_"]
        assert set(own) == differs | {"name"}
        preset = load_preset(name)
        assert {k for k in preset if preset[k] != leq[k]} == differs | {"name"}


def test_grid_knobs_are_declared_once():
    assert GRID_KNOBS == ("rnn", "picker_rnn", "cnn_blocks", "rnn_blocks")
    for primary in ("config.yaml", "profile.yaml"):
        own = yaml.safe_load((CONF_DIR / primary).read_text())
        assert not set(own) & set(GRID_KNOBS), primary  # they come from conf/knobs.yaml
        assert "knobs" in own["defaults"]
    for primary in ("config", "profile"):
        cfg = compose_cfg(primary)
        assert all(k in cfg and cfg[k] is None for k in GRID_KNOBS)


def test_data_is_split_into_source_loader_and_augmentation_under_the_same_keys():
    for source in options("data"):
        own = set(yaml.safe_load((CONF_DIR / "data" / f"{source}.yaml").read_text()))
        assert not own & {"batch_size", "num_workers", "augment"}, source
    cfg = compose_cfg("config", "data.batch_size=8", "data.augment.add_gap=0.1")
    assert cfg.data.batch_size == 8 and cfg.data.augment.add_gap == 0.1 and cfg.data.kind
    assert compose_cfg("config", "data/augment=none").data.augment.enabled is False


def test_baseline_group_and_model_alias_compose_the_same_settings():
    direct = compose_cfg("config", "baseline=stalta")
    alias = compose_cfg("config", "model=stalta")
    assert OmegaConf.to_container(direct.baseline) == OmegaConf.to_container(alias.model)
    assert config_hash(effective_config(direct, None)) == config_hash(effective_config(alias, None))


# --- DVC: a training stage depends on every file its preset is composed from -----------------

def composed_from(group_file: str) -> set[str]:
    """conf-relative paths of a config and of everything its defaults list pulls in."""
    path = CONF_DIR / f"{group_file}.yaml"
    out = {group_file}
    group = group_file.rsplit("/", 1)[0]
    for entry in yaml.safe_load(path.read_text()).get("defaults") or []:
        if entry == "_self_":
            continue
        name = str(entry).split("@", 1)[0]
        out |= composed_from(name.lstrip("/") if name.startswith("/") else f"{group}/{name}")
    return out


def test_dvc_training_stages_track_every_file_their_preset_is_composed_from():
    spec = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    variants = next(v["variants"] for v in spec["vars"] if "variants" in v)
    deps = spec["stages"]["train"]["do"]["deps"]
    assert "conf/model/${item.model}.yaml" in deps and "conf/${item.base}.yaml" in deps
    for key, item in variants.items():
        tracked = {f"model/{item['model']}", item["base"]}
        assert composed_from(f"model/{item['model']}") <= tracked, key
    params = [next(iter(p)) if isinstance(p, dict) else p
              for p in spec["stages"]["train"]["do"]["params"]]
    assert {"conf/knobs.yaml", "conf/data/loader/default.yaml",
            "conf/data/augment/eqt.yaml"} <= set(params)


def test_a_preset_may_name_its_builder_with_a_target():
    """Model configs may carry `_target_` (how Hydra finds a family's builder): it is not a
    ModelSpec field, so the spec, and with it the training identity, stay the same."""
    with_target = {**load_preset("feq3"), "_target_": "feq_lab.models.build_model"}
    assert build_model(with_target).spec == build_model("feq3").spec
