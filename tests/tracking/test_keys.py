"""Metric keys are declared once (feq_lab/tracking/keys.py); every config that names a metric —
selection policies, Optuna objectives — is checked against them at start-up."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from feq_lab.errors import ConfigError
from feq_lab.job.assess import HEADLINE_KEYS
from feq_lab.paths import CONF_DIR
from feq_lab.selection.policy import check_known_keys
from feq_lab.tracking.keys import LATENCY_ONNX_P50, check_metric_key, is_known
from feq_lab.tracking.sweep_callback import check_search_keys


def test_every_headline_key_is_known_and_typos_are_not():
    assert all(is_known(k) for k in HEADLINE_KEYS)
    assert is_known("val/s_f1_ci_low") and is_known("test_eqt/p_recall") and is_known("thresholds/s")
    assert is_known("params/phasenet_body_torch")  # a family's own sections
    for typo in ("val/s_f2", "latency/onnx_window_ms_p5", "val/sf1", "s_f1", "params/total"):
        assert not is_known(typo), typo


def test_an_unknown_key_is_a_config_error_naming_where_and_the_closest_key():
    with pytest.raises(ConfigError) as err:
        check_metric_key("latency/onnx_window_p50", "select.objectives[1].key")
    assert err.value.key == "select.objectives[1].key"
    assert LATENCY_ONNX_P50 in str(err.value)


@pytest.mark.parametrize("policy", ["constraints", "pareto", "weighted"])
def test_shipped_policies_name_only_known_keys_and_a_typo_is_refused(policy):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        sel = compose("select", overrides=[f"select={policy}"], return_hydra_config=False).select
    cfg = OmegaConf.to_container(sel, resolve=False)
    check_known_keys(cfg)  # the shipped file passes
    cfg["tie_breakers"] = [{"key": "val/detecton_fn", "goal": "min"}]
    with pytest.raises(ConfigError) as err:
        check_known_keys(cfg)
    assert err.value.key == "select.tie_breakers[0].key" and "val/detection_fn" in str(err.value)


@pytest.mark.parametrize("search", ["optuna", "optuna_mo"])
def test_shipped_optuna_objectives_are_known_and_a_typo_is_refused(search):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"hparams_search={search}"], return_hydra_config=True)
    check_search_keys(cfg)
    with open_dict(cfg):
        cfg.hydra.sweeper.objectives[0].metric = "val/s_f1x"
    with pytest.raises(ConfigError, match=r"hydra.sweeper.objectives\[0\].metric"):
        check_search_keys(cfg)


def test_stream_and_early_pick_keys_are_known_so_policies_can_name_them():
    from feq_lab.streaming.monitor import latency_metrics
    from feq_lab.tracking import keys

    assert keys.is_known(keys.STREAM_P_LATENCY_P50) and keys.is_known("val/early_p_recall_1s")
    assert keys.is_known("test/early_p_precision_0.5s") and not keys.is_known("stream/nope")
    logged = latency_metrics({"p_latency_s_p50": 1.2, "false_events": 3, "s_latency_s_p95": None})
    assert set(logged) == {keys.STREAM_P_LATENCY_P50, "stream/false_events"}
    assert all(keys.is_known(k) for k in logged)
