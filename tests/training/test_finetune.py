"""Fine-tuning with lineage (issue 13): `init_from=models:/feq-picker@champion` starts from the
registered model's weights — the first training step's loss is that model's loss on the same
batch — freezes sections on request, and tags the run with its parent model version (a real
MLflow SQLite store in tmp_path)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from feq_lab.errors import ConfigError
from feq_lab.job.run import fit, plan_job, prepare_data, run_job
from feq_lab.models import build_model, save_checkpoint
from feq_lab.paths import CONF_DIR
from feq_lab.tracking.mlflow import Tracker
from feq_lab.tracking.registry import Registry
from feq_lab.training.finetune import TAG_PARENT_MODEL, TAG_PARENT_RUN, freeze_sections, load_parent
from feq_lab.training.module import PickerModule
from feq_lab.training.recipe import train_settings

TINY = ["data.n_earthquakes=12", "data.n_noise=4", "data.seed=3", "data.batch_size=4",
        "trainer.max_epochs=1", "train.limit_train_batches=1", "train.progress_bar=false",
        "measure.latency=false", "eval.n_plot_traces=0", "eval.bootstrap.n=10",
        "eval.threshold_grid.detection=[0.5]", "eval.threshold_grid.p=[0.3]",
        "eval.threshold_grid.s=[0.3]"]


def loss_without_dropout(module: PickerModule, batch) -> float:
    """The training-mode loss (BatchNorm on batch statistics) with dropout off, so it depends
    on the weights alone."""
    module.model.train()
    for m in module.model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    with torch.no_grad():
        loss = float(module.losses(batch)["loss"])
    module.model.train()
    return loss


class FirstStepLoss(pl.Callback):
    """The loss of the first training batch under the weights that step starts from, taken just
    before the optimiser changes them."""

    def __init__(self) -> None:
        self.batch = None
        self.loss = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.batch is None:
            self.batch = batch

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if self.loss is None:
            self.loss = loss_without_dropout(module, self.batch)


@pytest.fixture
def registered(tmp_path):
    """A FEQ3 with its own (non-default) weights, registered as feq-picker@champion."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    torch.manual_seed(11)
    parent = build_model("feq3")
    with torch.no_grad():
        for p in parent.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tracker = Tracker(uri, "feq-lab")
    run_id = tracker.start_run("parent", {}, {})
    tracker.log_pyfunc_model(save_checkpoint(parent, tmp_path / "parent.pt"), None, run_id)
    tracker.end_run(run_id, "FINISHED")
    version = Registry(uri).register(run_id, "feq-picker", "champion")
    return {"uri": uri, "parent": parent.eval(), "run_id": run_id, "version": version}


def cfg_of(tmp_path, uri, *overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*TINY, f"data.out_dir={tmp_path / 'subset'}",
                                             f"tracking.uri={uri}", *overrides])


def test_init_from_a_registered_model_starts_from_its_weights_and_records_lineage(
        tmp_path, registered, torch_one_thread):
    cfg = cfg_of(tmp_path, registered["uri"], "init_from=models:/feq-picker@champion",
                 "model=leq")  # the parent's architecture wins over model=
    plan = plan_job(cfg)
    assert plan.name == "feq3" and plan.lineage is not None
    parent = registered["parent"]
    for key, value in parent.state_dict().items():
        assert torch.equal(plan.model.state_dict()[key], value), key
    data_dir, _ = prepare_data(cfg)
    first = FirstStepLoss()
    fit(plan, cfg, data_dir, tmp_path / "fit", [], callbacks=[first])
    expected = loss_without_dropout(PickerModule(parent, train_settings({})), first.batch)
    assert first.loss == pytest.approx(expected, rel=1e-6)
    fresh = loss_without_dropout(PickerModule(build_model("feq3"), train_settings({})), first.batch)
    assert abs(fresh - expected) > 1e-3  # a model not started from the parent differs

    run_job(cfg_of(tmp_path, registered["uri"], "init_from=models:/feq-picker@champion"),
            run_dir=tmp_path / "run", reraise=True)
    tracker = Tracker(registered["uri"], "feq-lab")
    runs = tracker.client.search_runs([tracker.experiment_id],
                                      f"tags.`{TAG_PARENT_MODEL}` = 'feq-picker/{registered['version']}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags[TAG_PARENT_RUN] == registered["run_id"]
    assert runs[0].data.tags["feq.variant"] == f"FEQ3 (from feq-picker/{registered['version']})"


def test_init_from_a_lab_checkpoint_or_seisbench_weights(tmp_path):
    import seisbench.models as sbm

    torch.manual_seed(1)
    phasenet = build_model("phasenet")
    model, lineage = load_parent(str(save_checkpoint(phasenet, tmp_path / "pn.pt")), None)
    assert model.name == "phasenet" and model.training
    assert torch.equal(model.head.weight, phasenet.head.weight)
    assert lineage.parent_model == str((tmp_path / "pn.pt").resolve())
    sbm.PhaseNet().save(tmp_path / "seisbench_pn")
    model, _ = load_parent(str(tmp_path / "seisbench_pn.pt"), None)
    assert model.name == "phasenet"
    with pytest.raises(ConfigError) as info:
        load_parent(str(tmp_path / "missing.pt"), None)
    assert info.value.key == "init_from"


def test_freeze_fixes_whole_sections():
    model = build_model("feq3")
    freeze_sections(model, ["encoder", "bottleneck"])
    sections = model.section_modules()
    assert not any(p.requires_grad for m in sections["encoder"] for p in m.parameters())
    assert all(p.requires_grad for m in sections["decoder"] for p in m.parameters())
    with pytest.raises(ConfigError) as info:
        freeze_sections(build_model("feq3"), ["encoders"])
    assert info.value.key == "freeze"
    with pytest.raises(ConfigError):
        freeze_sections(build_model("phasenet"), ["rnn_transformer"])  # PhaseNet has none
