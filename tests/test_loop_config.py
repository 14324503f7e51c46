"""The main job's config handling: effective knobs, the resume hash, flat params, and
validation that fails before any work (compose API: no subprocess, no training)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from feq_lab.errors import ConfigError
from feq_lab.job.config import config_hash, effective_config, run_params
from feq_lab.job.run import plan_job, run_job
from feq_lab.paths import CONF_DIR


def cfg_of(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def effective_hash(*overrides: str) -> str:
    cfg = cfg_of(*overrides)
    return config_hash(effective_config(cfg, plan_job(cfg).spec))


def test_hash_follows_what_is_built_not_how_it_was_asked():
    base = effective_hash()
    assert effective_hash("rnn=bilstm", "cnn_blocks=2") == base  # FEQ3's own values
    assert effective_hash("resume=true", "tracking.uri=sqlite:////elsewhere.db",
                          "train.progress_bar=false") == base  # volatile keys
    # thresholds and evaluation settings are evaluation, not training: same training identity
    assert effective_hash("thresholds.detection=0.2", "thresholds.p=0.3",
                          "eval.tune_thresholds_on=null", "thresholds.s=0.1",
                          "eval.tolerance_s=0.3", "measure.latency_repeats=3") == base
    assert effective_hash("rnn=gru") != base
    assert effective_hash("seed=1") != base
    assert effective_hash("data.n_noise=7") != base


def test_params_are_flat_with_effective_knobs_and_preset_name():
    cfg = cfg_of("model=feq1", "cnn_blocks=3")
    params = run_params(effective_config(cfg, plan_job(cfg).spec), "abc.dir")
    assert params["model"] == "feq1"
    assert params["rnn"] == "bigru" and params["picker_rnn"] == "gru"  # from the preset
    assert params["cnn_blocks"] == "3" and params["model.cnn_blocks"] == "3"
    assert params["rnn_blocks"] == "2"
    assert params["thresholds.detection"] == "null"  # tuned on validation by default
    assert params["data_version"] == "abc.dir"
    assert all(isinstance(v, str) for v in params.values())


def test_stalta_is_planned_without_a_network_and_ignores_the_knobs():
    cfg = cfg_of("model=stalta", "rnn=gru")
    plan = plan_job(cfg)
    from feq_lab.models import Detector, LearnedModel

    assert plan.kind == "stalta" and plan.name == "stalta" and plan.spec is None
    assert isinstance(plan.model, Detector) and not isinstance(plan.model, LearnedModel)
    assert effective_config(cfg, None)["rnn"] is None
    assert effective_hash("model=stalta", "rnn=gru") == effective_hash("model=stalta")


@pytest.mark.parametrize("override, key", [
    ("rnn=transformer", "rnn"),
    ("cnn_blocks=0", "cnn_blocks"),
    ("thresholds.p=1.5", "thresholds.p"),
    ("train.loss_weights.p=-1", "train.loss_weights.p"),
    ("eval.threshold_grid.s=[]", "eval.threshold_grid.s"),
    ("eval.tune_thresholds_on=null", "thresholds.detection"),  # null thresholds need tuning
])
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        plan_job(cfg_of(override))
    assert err.value.key.startswith(key)


def test_bad_config_fails_before_any_work_and_opens_no_run(tmp_path):
    out_dir = tmp_path / "subset"
    db = tmp_path / "mlflow.db"
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # a real, existing store
    uri = f"sqlite:///{db}"
    cfg = cfg_of("rnn=transformer", f"data.out_dir={out_dir}", f"tracking.uri={uri}")
    with pytest.raises(ConfigError):  # a single run (`python -m feq_lab`): nothing opened
        run_job(cfg, run_dir=tmp_path / "run", reraise=True)
    assert not out_dir.exists()  # no data was prepared
    assert not (tmp_path / "run").exists()
    from feq_lab.tracking.mlflow import load_runs

    assert load_runs(uri, "feq-lab") == []
    # a sweep's point (reraise=False) returns NaN objectives; the sweep records it as FAILED
    result = run_job(cfg, run_dir=tmp_path / "run2")
    assert result["test/p_f1"] != result["test/p_f1"]  # NaN
    (failed,) = load_runs(uri, "feq-lab")
    assert failed.status == "FAILED" and failed.tags["feq.error"].startswith("ConfigError: rnn")
    assert not out_dir.exists()


@pytest.mark.parametrize("override, key", [
    ("data.kind=stea", "data.kind"),
    ("data.batch_size=1", "data.batch_size"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.augment.add_noise=2", "data.augment.add_noise"),
    ("baseline=stalta", None),
    ("baseline=stalta baseline.lta_s=0.1", "baseline.sta_s"),
    ("model=stalta model.lta_s=0.1", "model.sta_s"),
])
def test_data_and_baseline_settings_are_checked_in_the_plan(override, key):
    cfg = cfg_of(*override.split())
    if key is None:
        assert plan_job(cfg).kind == "stalta"
        return
    with pytest.raises(ConfigError) as err:
        plan_job(cfg)
    assert err.value.key == key


def test_baseline_group_and_model_alias_are_one_run_identity():
    assert effective_hash("baseline=stalta") == effective_hash("model=stalta")
    assert effective_hash("baseline=stalta", "model=leq") == effective_hash("model=stalta")
    cfg = cfg_of("baseline=stalta")
    params = run_params(effective_config(cfg, plan_job(cfg).spec), None)
    assert params["model"] == "stalta" and "baseline.name" not in params
