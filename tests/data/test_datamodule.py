"""SteadDataModule: contract batches, half-augmented training, unaugmented val/test, workers."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from feq_lab.data.datamodule import SteadDataModule
from feq_lab.data.stead import open_dataset
from feq_lab.errors import ConfigError

AUGMENT = {"enabled": True, "shift_event": 0.99, "add_event": 0.6, "add_noise": 0.3,
           "drop_channel": 0.5, "add_gap": 0.2, "min_snr_db": 10.0}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def test_batch_contract(tiny_subset):
    dm = SteadDataModule(tiny_subset, batch_size=8, num_workers=0, augment=AUGMENT, seed=1)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (8, 3, 6000) and batch["x"].dtype == torch.float32
    for key in ("y_det", "y_p", "y_s"):
        assert batch[key].shape == (8, 6000) and batch[key].dtype == torch.float32
    assert batch["p_arrival_sample"].dtype == torch.float64
    assert batch["is_earthquake"].dtype == torch.bool and len(batch["trace_name"]) == 8
    # Half original, half augmented copies of the same traces.
    assert batch["trace_name"][:4] == batch["trace_name"][4:]
    x = batch["x"].numpy()
    assert np.allclose(x.mean(axis=-1), 0, atol=1e-4)
    eq = batch["is_earthquake"].numpy()
    assert np.isnan(batch["p_arrival_sample"].numpy()[~eq]).all()
    for i in np.nonzero(eq)[0]:
        p = round(batch["p_arrival_sample"][i].item())
        assert batch["y_p"][i, p] == pytest.approx(1.0)


def test_test_loader_is_csv_order_and_unaugmented(tiny_subset):
    dm = SteadDataModule(tiny_subset, batch_size=4, num_workers=0, augment=AUGMENT, seed=1)
    names = [n for b in dm.test_dataloader() for n in b["trace_name"]]
    ds = open_dataset(tiny_subset)
    assert names == ds.metadata.loc[ds.metadata["split"] == "test", "trace_name"].tolist()
    first = next(iter(dm.test_dataloader()))
    raw = ds.get_waveform(first["trace_name"][0]).T
    expect = (raw - raw.mean(1, keepdims=True)) / raw.std(1, keepdims=True)
    np.testing.assert_allclose(first["x"][0].numpy(), expect, atol=1e-4)
    val = [n for b in dm.val_dataloader() for n in b["trace_name"]]
    assert len(val) == 3


def test_seeded_and_worker_count_independent(tiny_subset):
    def first_batches(workers, seed):
        dm = SteadDataModule(tiny_subset, batch_size=8, num_workers=workers, augment=AUGMENT,
                             seed=seed)
        it = iter(dm.train_dataloader())
        return [next(it) for _ in range(2)]

    a, b, c = first_batches(0, 4), first_batches(2, 4), first_batches(0, 5)
    for x, y in zip(a, b):
        assert x["trace_name"] == y["trace_name"]
        torch.testing.assert_close(x["x"], y["x"])
        torch.testing.assert_close(x["y_p"], y["y_p"])
    assert a[0]["trace_name"] != c[0]["trace_name"] or not torch.equal(a[0]["x"], c[0]["x"])


def test_epochs_differ_and_cover_all_training_traces(tiny_subset):
    dm = SteadDataModule(tiny_subset, batch_size=16, num_workers=0, augment=AUGMENT, seed=2)
    loader = dm.train_dataloader()
    epoch0 = [n for b in loader for n in b["trace_name"]]
    epoch1 = [n for b in loader for n in b["trace_name"]]
    n_train = len(dm.split("train"))
    assert len(epoch0) == 2 * n_train and sorted(set(epoch0)) == sorted(set(epoch1))
    assert epoch0 != epoch1


class _Recorder(pl.LightningModule):
    """Trains nothing; records each epoch's training batches as Lightning hands them over."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[int, list] = {}

    def training_step(self, batch, index):
        self.seen.setdefault(self.current_epoch, []).append(
            (batch["trace_name"], batch["x"].clone()))
        return self.w * batch["x"].mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


@pytest.mark.parametrize("augment", [AUGMENT, {"enabled": False}], ids=["half-augmented", "plain"])
def test_lightning_epochs_differ_and_do_not_depend_on_workers(tiny_subset, augment):
    """Under Lightning's loop (which reads len() batches and never exhausts the sampler) every
    epoch gets its own order and augmentation, the same with 0 or 2 workers, and the loaders
    leave torch's global RNG (dropout masks) alone."""
    def fit(workers):
        torch.manual_seed(0)
        dm = SteadDataModule(tiny_subset, batch_size=8, num_workers=workers, augment=augment,
                             seed=5)
        module = _Recorder()
        pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, limit_val_batches=0).fit(module, dm)
        return module.seen, torch.rand(4)

    (seen0, rng0), (seen2, rng2) = fit(0), fit(2)
    assert sorted(seen0) == sorted(seen2) == [0, 1, 2]
    names = [[n for batch, _ in seen0[e] for n in batch] for e in range(3)]
    assert names[0] != names[1] and names[1] != names[2] and names[0] != names[2]
    for epoch in range(3):
        for (names_a, x_a), (names_b, x_b) in zip(seen0[epoch], seen2[epoch], strict=True):
            assert names_a == names_b and torch.equal(x_a, x_b)
    torch.manual_seed(0)
    assert torch.equal(rng0, rng2) and torch.equal(rng0, torch.rand(4))


def test_no_augment_plain_batches(tiny_subset):
    dm = SteadDataModule(tiny_subset, batch_size=8, num_workers=0, augment={"enabled": False})
    batch = next(iter(dm.train_dataloader()))
    assert len(set(batch["trace_name"])) == 8


def test_waveform_cache_gives_the_same_batches_within_its_budget(tiny_subset):
    """The training split's in-memory cache changes nothing but the reads: the same batches bit
    for bit over two epochs (the second all from memory), and no more bytes held than allowed."""
    def two_epochs(cache_mb):
        dm = SteadDataModule(tiny_subset, batch_size=8, num_workers=0, augment=AUGMENT, seed=3,
                             cache_mb=cache_mb)
        loader = dm.train_dataloader()
        return dm.split("train"), [b for _ in range(2) for b in loader]

    _, plain = two_epochs(0)
    full, cached = two_epochs(1024)
    trace_bytes = 6000 * 3 * 4
    small, capped = two_epochs(2.5 * trace_bytes / 2**20)  # room for two traces
    assert len(full._cache) == len(full) and full._cached_bytes == len(full) * trace_bytes
    assert len(small._cache) == 2 and small._cached_bytes <= small.cache_bytes
    assert not next(iter(full._cache.values())).flags.writeable  # augmentation works on copies
    for a, b, c in zip(plain, cached, capped):
        assert a["trace_name"] == b["trace_name"] == c["trace_name"]
        for key in ("x", "y_det", "y_p", "y_s"):
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])


@pytest.mark.parametrize("bad", [-1, "lots", True, float("nan")])
def test_cache_size_must_be_a_number_of_megabytes(bad):
    with pytest.raises(ConfigError, match="data.cache_mb"):
        SteadDataModule(".", cache_mb=bad)
