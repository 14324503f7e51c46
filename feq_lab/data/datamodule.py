"""PyTorch datasets and the Lightning DataModule over a STEAD-format subset directory.

Training follows EQT: every batch is half original traces and half augmented copies of the
same traces (`HalfAugmentedBatchSampler` yields B/2 trace indices twice, the second time
flagged for augmentation); the original half gets EQT's own light treatment (a shift at half
the probability, `augment.Augmentation.original`). Validation and test are never augmented;
test keeps CSV order.
Randomness is seeded per (seed, epoch, trace, copy), so results do not depend on the number of
workers. Each worker opens its own HDF5 handle lazily (see `stead._FileHandles`).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler
from torch.utils.data import Dataset as TorchDataset

from feq_lab.data import augment as aug
from feq_lab.data.labels import detection_label, make_labels, normalize, pick_label
from feq_lab.data.stead import Dataset as SteadDataset
from feq_lab.data.stead import open_dataset, snr_matrix
from feq_lab.errors import ConfigError, DataError


class WaveformDataset(TorchDataset):
    """Samples of one split. Index: an int (unaugmented) or (position, augmented, epoch).

    `cache_bytes`: waveforms read from HDF5 are kept in memory (read-only arrays) until this
    many bytes are held; later ones are read each time. Why: training reads every trace twice
    per epoch (its original and its augmented copy, in the same batch), and opening an HDF5
    dataset and reading it was ~45% of the quick experiment's batch assembly (cProfile). The
    arrays are the validated reads themselves, so batches are the same bit for bit. Each
    DataLoader worker holds its own cache.
    """

    def __init__(self, data: SteadDataset, transform: aug.Augmentation | None = None,
                 seed: int = 0, min_snr_db: float = 10.0, cache_bytes: int = 0):
        self.data = data
        self.transform = transform
        self.seed = int(seed)
        self.cache_bytes = int(cache_bytes)
        self._cache: dict[int, np.ndarray] = {}
        self._cached_bytes = 0
        meta = data.metadata
        self.trace_name = meta["trace_name"].tolist()
        self.p = meta["p_arrival_sample"].to_numpy(dtype=np.float64)
        self.s = meta["s_arrival_sample"].to_numpy(dtype=np.float64)
        self.coda = meta["coda_end_sample"].to_numpy(dtype=np.float64)
        self.is_eq = (meta["trace_category"] != "noise").to_numpy() & np.isfinite(self.p)
        snr = snr_matrix(meta)
        self.snr_ok = np.all(snr >= min_snr_db, axis=1)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int | tuple[int, bool, int]) -> dict[str, Any]:
        position, augmented, epoch = (index, False, 0) if isinstance(index, (int, np.integer)) \
            else index
        position = int(position)
        sample = {
            "waveform": self._waveform(position).T.copy(),  # (3, T) channel-first
            "p": float(self.p[position]), "s": float(self.s[position]),
            "coda_end": float(self.coda[position]), "is_earthquake": bool(self.is_eq[position]),
            "snr_ok": bool(self.snr_ok[position]), "extra_events": [],
        }
        if self.transform is not None and not isinstance(index, (int, np.integer)):
            # both halves of an EQT batch: the augmented copy, and the original (shifted too)
            rng = np.random.default_rng([self.seed, int(epoch), position, int(augmented)])
            sample = self.transform(sample, rng, augmented)
        return to_item(sample, self.trace_name[position])

    def _waveform(self, position: int) -> np.ndarray:
        """The validated (T, 3) waveform, from the cache when it holds it (never written to)."""
        cached = self._cache.get(position)
        if cached is not None:
            return cached
        waveform = self.data.get_waveform_at(position)
        if self._cached_bytes + waveform.nbytes <= self.cache_bytes:
            waveform.flags.writeable = False
            self._cache[position] = waveform
            self._cached_bytes += waveform.nbytes
        return waveform


def to_item(sample: Mapping[str, Any], trace_name: str) -> dict[str, Any]:
    """A sample dict -> the batch item of the data contract (normalised x, EQT labels)."""
    x = sample["waveform"]
    t = x.shape[-1]
    p = sample["p"] if sample["is_earthquake"] else math.nan
    s = sample["s"] if sample["is_earthquake"] else math.nan
    y_det, y_p, y_s = make_labels(p, s, t)
    for p2, s2 in sample.get("extra_events", []):
        y_det = np.maximum(y_det, detection_label(p2, s2, t))
        y_p = np.maximum(y_p, pick_label(p2, t))
        y_s = np.maximum(y_s, pick_label(s2, t))
    return {"x": torch.from_numpy(normalize(x)), "y_det": torch.from_numpy(y_det),
            "y_p": torch.from_numpy(y_p), "y_s": torch.from_numpy(y_s), "trace_name": trace_name,
            "p_arrival_sample": float(p), "s_arrival_sample": float(s),
            "is_earthquake": bool(sample["is_earthquake"])}


class EpochOrder(Sampler[int]):
    """The training traces in a seeded order per epoch: permutation of (seed, epoch).

    A pass takes the current epoch when its first index is drawn, and the next pass the one
    after, unless `set_epoch` says otherwise. Why at the start: Lightning stops reading after
    len() batches, so a pass it reads never ends from the sampler's side, and an epoch counted at
    the end never advanced: every epoch replayed epoch 0's order and augmentation. Lightning
    calls `set_epoch` on a batch sampler's `.sampler`, which is where this sits.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def begin_pass(self) -> tuple[int, np.ndarray]:
        """(this pass's epoch, its order); the next pass gets the following epoch."""
        epoch = self.epoch
        self.epoch = epoch + 1
        return epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __iter__(self) -> Iterator[int]:
        _, order = self.begin_pass()
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.n


class HalfAugmentedBatchSampler(Sampler):
    """Batches of B/2 shuffled traces followed by the same traces flagged for augmentation."""

    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool = False):
        if batch_size < 2:
            raise ConfigError("data.batch_size", "must be >= 2 for half-augmented batches")
        self.n, self.half, self.drop_last = n, batch_size // 2, drop_last
        self.sampler = EpochOrder(n, seed)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[tuple[int, bool, int]]]:
        epoch, order = self.sampler.begin_pass()  # on the first batch drawn (a generator)
        for start in range(0, self.n, self.half):
            chunk = order[start:start + self.half]
            if self.drop_last and len(chunk) < self.half:
                break
            yield [(int(i), False, epoch) for i in chunk] + [(int(i), True, epoch) for i in chunk]

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.half)
        return full + (1 if rest and not self.drop_last else 0)


def _worker_context() -> str | None:
    """"fork" on Linux (torch's usual start method there), named explicitly: a job started by
    joblib's loky launcher inherits loky's start method, whose processes cannot start the
    loader's workers. Elsewhere the platform's default."""
    return "fork" if sys.platform.startswith("linux") else None


def _collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "x": torch.stack([i["x"] for i in items]),
        "y_det": torch.stack([i["y_det"] for i in items]),
        "y_p": torch.stack([i["y_p"] for i in items]),
        "y_s": torch.stack([i["y_s"] for i in items]),
        "trace_name": [i["trace_name"] for i in items],
        "p_arrival_sample": torch.tensor([i["p_arrival_sample"] for i in items], dtype=torch.float64),
        "s_arrival_sample": torch.tensor([i["s_arrival_sample"] for i in items], dtype=torch.float64),
        "is_earthquake": torch.tensor([i["is_earthquake"] for i in items], dtype=torch.bool),
    }


class SteadDataModule(pl.LightningDataModule):
    """Train/val/test loaders over `<data_dir>/subset.{hdf5,csv}` (needs the `split` column)."""

    def __init__(self, data_dir: str | os.PathLike, batch_size: int = 32, num_workers: int = 0,
                 augment: Mapping[str, Any] | None = None, seed: int = 0, cache_mb: float = 0):
        super().__init__()
        self.data_dir = Path(data_dir)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.augment = dict(augment or {})
        self.seed = int(seed)
        if self.batch_size < 1:
            raise ConfigError("data.batch_size", f"must be >= 1, got {batch_size}")
        if self.num_workers < 0:
            raise ConfigError("data.num_workers", f"must be >= 0, got {num_workers}")
        if isinstance(cache_mb, bool) or not isinstance(cache_mb, (int, float)) \
                or not cache_mb >= 0:
            raise ConfigError("data.cache_mb", f"must be a number of MB >= 0, got {cache_mb!r}")
        # the training split's waveforms in memory (WaveformDataset says why); val and test are
        # read once per evaluation
        self.cache_bytes = int(cache_mb * 2**20)
        self._splits: dict[str, WaveformDataset] = {}

    def _path(self) -> Path:
        h5 = self.data_dir / "subset.hdf5" if self.data_dir.is_dir() else self.data_dir
        if not h5.exists():
            raise DataError("no subset here; run `python -m feq_lab.prepare` first",
                            path=str(h5))
        return h5

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        data = open_dataset(self._path())
        if "split" not in data.metadata:
            raise DataError("subset CSV has no split column", path=str(self._path()))
        transform = aug.from_config(self.augment)
        min_snr = float(self.augment.get("min_snr_db", 10.0))
        for name in ("train", "val", "test"):
            part = data.filter(split=name)
            self._splits[name] = WaveformDataset(
                part, transform if name == "train" else None, seed=self.seed,
                min_snr_db=min_snr, cache_bytes=self.cache_bytes if name == "train" else 0)

    def split(self, name: str) -> WaveformDataset:
        self.setup()
        return self._splits[name]

    def _loader(self, ds: WaveformDataset, **kw: Any) -> DataLoader:
        # Each loader iterator draws its workers' base seed from the loader's generator, or from
        # torch's global RNG when it has none. Persistent workers draw it once per fit, others
        # once per epoch, so the global RNG (dropout masks) would then depend on num_workers. A
        # loader-owned generator keeps training the same for any number of workers.
        workers = self.num_workers > 0
        return DataLoader(ds, num_workers=self.num_workers, collate_fn=_collate,
                          persistent_workers=workers,
                          multiprocessing_context=_worker_context() if workers else None,
                          generator=torch.Generator().manual_seed(self.seed), **kw)

    def train_dataloader(self) -> DataLoader:
        ds = self.split("train")
        if ds.transform is None:  # augmentation off: plain shuffled batches
            # the sampler's own generator: the base-seed draws above never shift the order
            order = RandomSampler(ds, generator=torch.Generator().manual_seed(self.seed))
            return self._loader(ds, batch_size=self.batch_size, sampler=order)
        sampler = HalfAugmentedBatchSampler(len(ds), max(self.batch_size, 2), self.seed)
        return self._loader(ds, batch_sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.split("val"), batch_size=self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.split("test"), batch_size=self.batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
