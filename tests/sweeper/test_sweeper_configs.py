"""Configs of the search and scale-out (compose API) and the search-space syntax, in-process."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from sweeper_helpers import prepare_tiny_data, subprocess_env, tiny_job_overrides

from feq_lab.errors import ConfigError
from feq_lab.paths import CONF_DIR
from hydra_plugins.feq_optuna_sweeper._impl import SweeperImpl, parse_objectives
from hydra_plugins.feq_optuna_sweeper._space import build_search_space, format_value


def _compose(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("name, n_objectives", [("optuna", 1), ("optuna_mo", 2)])
def test_hparams_search_configs_give_the_sweeper_a_search_space(name, n_objectives):
    cfg = _compose(f"hparams_search={name}")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("feq_optuna_sweeper.FeqOptunaSweeper")
    assert "optuna" in cfg and cfg.optuna is None  # filled per trial by the sweeper
    objectives = parse_objectives(sweeper.objectives)
    assert len(objectives) == n_objectives and objectives[0].metric == "val/s_f1"
    if n_objectives == 2:
        assert (objectives[1].metric, objectives[1].direction) == ("latency/onnx_window_ms_p50", "minimize")
    space = build_search_space(sweeper.params).distributions
    assert space["rnn"] == CategoricalDistribution(["lstm", "gru", "bilstm", "bigru"])
    assert space["cnn_blocks"] == IntDistribution(1, 4)
    assert isinstance(space["train.lr"], FloatDistribution) and space["train.lr"].log
    assert "rnn_blocks" in space
    assert not [k for k in space if k.startswith("thresholds")]  # evaluation, not training


def test_sampled_values_round_trip_through_hydras_override_parser():
    parser = OverridesParser.create()
    for value in [1e-05, 0.30000000000000004, 3, True, None, "lstm", "a b", "1e-3", "it's", "null"]:
        (override,) = parser.parse_overrides([f"key={format_value(value)}"])
        assert override.value() == value, value


def test_a_bad_search_space_names_the_key():
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.params\.train\.lr"):
        build_search_space({"train.lr": "tag(log, interval(0, 1e-2))"})
    with pytest.raises(ConfigError, match=r"objectives\[0\]\.direction"):
        parse_objectives([{"metric": "val/s_f1", "direction": "up"}])
    with pytest.raises(ConfigError, match=r"objectives\[0\]\.metric"):
        parse_objectives([{"metric": "test/s_f1", "direction": "maximize"}])
    with pytest.raises(ConfigError, match="evaluation setting"):
        build_search_space({"thresholds.detection": "interval(0.1, 0.6)"})


def test_a_stored_study_with_other_directions_is_refused(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="s", storage=storage, direction="maximize")
    impl = SweeperImpl(
        study_name="s", storage=storage, n_trials=1, n_jobs=None,
        objectives=[{"metric": "val/loss", "direction": "minimize"}],
        sampler={}, pruner={}, pass_trial_info=True, params={"x": "interval(0, 1)"},
    )
    with pytest.raises(ConfigError, match="has directions"):
        impl.open_study()


def test_gpu_ddp_slurm_and_server_configs_compose():
    gpu = _compose("trainer=gpu").trainer
    assert (gpu.accelerator, gpu.devices, gpu.deterministic) == ("gpu", 1, "warn")
    cfg = _compose("trainer=ddp", "trainer.devices=4", "hydra/launcher=slurm", "tracking=server")
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.num_nodes) == ("ddp", 4, 1)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.timeout_min) == (4, 4, 120)
    assert cfg.tracking.uri.startswith("http://") or "MLFLOW_TRACKING_URI" in __import__("os").environ
    assert cfg.tracking.experiment  # the rest is inherited from tracking/sqlite


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device")
def test_trainer_gpu_trains_one_epoch(tmp_path):
    data_dir = prepare_tiny_data(tmp_path / "subset")
    proc = subprocess.run(
        [sys.executable, "-m", "feq_lab", "trainer=gpu", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
         *tiny_job_overrides(data_dir)],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "FINISHED" in proc.stdout + proc.stderr
