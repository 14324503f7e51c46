"""`ModelSpec`: every knob of the one builder (REFERENCE §5.5) as plain, validated data.

Presets (`conf/model/*.yaml`; FEQ1-3 are LEQ plus a few fields, through Hydra defaults lists)
are data for this dataclass; the grid knobs (`GRID_KNOBS`, declared once in `conf/knobs.yaml`) and
any other field (`gru_impl`, `dropout`, ...) override preset fields. Validation happens here,
before any module is built, and every error names the key at fault.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from feq_lab.errors import ConfigError
from feq_lab.paths import CONF_DIR
from feq_lab.plain import to_plain as _plain

RNN_KINDS = ("lstm", "gru", "bilstm", "bigru")
PICKER_RNN_KINDS = ("lstm", "gru")
GRU_IMPLS = ("torch", "keras")
CONV_KINDS = ("plain", "separable")
BLOCK_KINDS = ("residual", "bottleneck")
TARGET_KEY = "_target_"
KNOBS_FILE = CONF_DIR / "knobs.yaml"
# The grid axes, read from their one declaration (conf/knobs.yaml, which the Hydra configs include).
GRID_KNOBS: tuple[str, ...] = tuple(yaml.safe_load(KNOBS_FILE.read_text()))


@dataclass(frozen=True)
class ModelSpec:
    """One member of the EQT/LEQ/FEQ family. Lengths are samples; widths are channels."""

    name: str
    encoder_conv: str
    encoder_filters: tuple[int, ...]
    encoder_kernels: tuple[int, ...]
    encoder_pools: tuple[int, ...]
    block: str
    block_kernels: tuple[int, ...]  # kernel pattern of the residual/bottleneck stack
    cnn_blocks: int  # stack length; the pattern is cycled when cnn_blocks exceeds it
    rnn: str
    rnn_blocks: int
    picker_rnn: str
    decoder_conv: str
    decoder_filters: tuple[int, ...]
    decoder_kernels: tuple[int, ...]
    decoder_upsample: tuple[int, ...]
    decoder_crops: tuple[tuple[int, int], ...]  # (left, right) samples cropped after upsampling
    encoder_shared: tuple[tuple[int, int], ...] = ()  # (stage, reused stage): shared weights
    decoder_shared: tuple[tuple[int, int], ...] = ()
    bottleneck_width: int = 8  # squeeze width of the bottleneck block
    units: int = 16
    attention_units: int = 32
    feedforward_units: int = 128
    transformer_blocks: int = 2
    local_attention_width: int = 3
    head_kernel: int = 11
    dropout: float = 0.1
    gru_impl: str = "torch"
    layer_norm_eps: float = 1e-6
    in_channels: int = 3
    in_samples: int = 6000

    @property
    def residual_kernels(self) -> tuple[int, ...]:
        """Kernel of each residual/bottleneck block (length `cnn_blocks`)."""
        pattern = self.block_kernels
        return tuple(pattern[i % len(pattern)] for i in range(self.cnn_blocks))

    @property
    def encoder_lengths(self) -> tuple[int, ...]:
        """Sequence length after each encoder stage (TF "same" pooling rounds up)."""
        lengths, n = [], self.in_samples
        for p in self.encoder_pools:
            n = math.ceil(n / p)
            lengths.append(n)
        return tuple(lengths)

    @property
    def decoder_lengths(self) -> tuple[int, ...]:
        lengths, n = [], self.encoder_lengths[-1] if self.encoder_pools else self.in_samples
        for s, (left, right) in zip(self.decoder_upsample, self.decoder_crops):
            n = n * s - left - right
            lengths.append(n)
        return tuple(lengths)

    @property
    def first_crop_stage(self) -> int:
        """Index of the first cropping decoder stage; earlier stages count as "RNN & transformer"
        in the report's section split (REFERENCE §5.1)."""
        for i, (left, right) in enumerate(self.decoder_crops):
            if left or right:
                return i
        return len(self.decoder_crops)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict (lists, not tuples) that `spec_from_dict` reads back."""
        return _plain(asdict(self))

    def validate(self, origin: Mapping[str, str] | None = None) -> ModelSpec:
        """Raise ConfigError naming the key of the first impossible value; return self."""
        origin = origin or {}

        def key(field: str) -> str:
            return origin.get(field, f"model.{field}")

        def fail(field: str, msg: str) -> None:
            raise ConfigError(key(field), msg)

        for f in (
            "cnn_blocks",
            "rnn_blocks",
            "units",
            "attention_units",
            "feedforward_units",
            "bottleneck_width",
            "head_kernel",
            "in_channels",
            "in_samples",
        ):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                fail(f, f"must be an integer >= 1, got {v!r}")
        for f in ("transformer_blocks", "local_attention_width"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                fail(f, f"must be an integer >= 0, got {v!r}")
        if self.rnn not in RNN_KINDS:
            fail("rnn", f"unknown RNN type {self.rnn!r}; expected one of {', '.join(RNN_KINDS)}")
        if self.picker_rnn not in PICKER_RNN_KINDS:
            fail(
                "picker_rnn",
                f"unknown RNN type {self.picker_rnn!r}; expected one of {', '.join(PICKER_RNN_KINDS)}",
            )
        if self.gru_impl not in GRU_IMPLS:
            fail(
                "gru_impl",
                f"unknown GRU implementation {self.gru_impl!r}; expected one of {', '.join(GRU_IMPLS)}",
            )
        if (
            not isinstance(self.dropout, (int, float))
            or isinstance(self.dropout, bool)
            or not 0 <= self.dropout < 1
        ):
            fail("dropout", f"must be a number in [0, 1), got {self.dropout!r}")
        if not isinstance(self.layer_norm_eps, (int, float)) or not self.layer_norm_eps > 0:
            fail("layer_norm_eps", f"must be > 0, got {self.layer_norm_eps!r}")
        for f, kinds in (
            ("encoder_conv", CONV_KINDS),
            ("decoder_conv", CONV_KINDS),
            ("block", BLOCK_KINDS),
        ):
            if getattr(self, f) not in kinds:
                fail(f, f"unknown kind {getattr(self, f)!r}; expected one of {', '.join(kinds)}")
        self._validate_stages(fail)
        return self

    def _validate_stages(self, fail) -> None:
        def positive_ints(f: str, values: Sequence[Any], n: int | None) -> None:
            if n is not None and len(values) != n:
                fail(f, f"needs {n} values (one per stage), got {len(values)}")
            if not values or any(
                not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values
            ):
                fail(f, f"must be a non-empty list of integers >= 1, got {list(values)!r}")

        n_enc = len(self.encoder_filters)
        positive_ints("encoder_filters", self.encoder_filters, None)
        positive_ints("encoder_kernels", self.encoder_kernels, n_enc)
        positive_ints("encoder_pools", self.encoder_pools, n_enc)
        positive_ints("block_kernels", self.block_kernels, None)
        n_dec = len(self.decoder_filters)
        positive_ints("decoder_filters", self.decoder_filters, None)
        positive_ints("decoder_kernels", self.decoder_kernels, n_dec)
        positive_ints("decoder_upsample", self.decoder_upsample, n_dec)
        if len(self.decoder_crops) != n_dec or any(
            len(c) != 2 or any(not isinstance(v, int) or v < 0 for v in c)
            for c in self.decoder_crops
        ):
            fail("decoder_crops", f"needs {n_dec} [left, right] pairs of integers >= 0")
        for f, filters, kernels, first_in in (
            ("encoder_shared", self.encoder_filters, self.encoder_kernels, self.in_channels),
            ("decoder_shared", self.decoder_filters, self.decoder_kernels, self.units),
        ):
            ins = (first_in, *filters[:-1])
            for pair in getattr(self, f):
                if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
                    fail(f, f"entries are [stage, reused_stage] pairs, got {list(pair)!r}")
                stage, source = pair
                if not 0 <= source < stage < len(filters):
                    fail(f, f"[{stage}, {source}]: a stage can only reuse an earlier stage")
                if (ins[stage], filters[stage], kernels[stage]) != (
                    ins[source],
                    filters[source],
                    kernels[source],
                ):
                    fail(f, f"stage {stage} cannot reuse stage {source}: shapes differ")
        if self.decoder_lengths[-1] != self.in_samples:
            fail(
                "decoder_crops",
                f"decoder output length {self.decoder_lengths[-1]} != in_samples {self.in_samples} "
                f"(encoder lengths {list(self.encoder_lengths)}, decoder {list(self.decoder_lengths)})",
            )
        if self.block == "residual" and self.encoder_filters[-1] <= 0:
            fail("encoder_filters", "residual width must be positive")


def layer_indices(n_stages: int, shared: Sequence[Sequence[int]]) -> list[int]:
    """Map each stage to the index of the layer it uses, numbered in order of first use."""
    reuse = {int(stage): int(source) for stage, source in shared}
    out: list[int] = []
    next_index = 0
    for stage in range(n_stages):
        if stage in reuse:
            out.append(out[reuse[stage]])
        else:
            out.append(next_index)
            next_index += 1
    return out


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


_FIELDS = {f.name for f in fields(ModelSpec)}


def preset_path(name: str) -> Path:
    return CONF_DIR / "model" / f"{name}.yaml"


def available_presets() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """`conf/model/<name>.yaml` as Hydra composes it (its defaults list applied), as a plain dict.

    Why not Hydra's compose API: this runs inside Hydra apps and outside them (profile, stream,
    checkpoints), where a second global Hydra cannot be initialised; presets only use the simple
    form of a defaults list (other presets of the same group, and `_self_`), resolved here.
    """
    data = _compose_preset(name, ())
    data.setdefault("name", name)
    return data


def _compose_preset(name: str, chain: tuple[str, ...]) -> dict[str, Any]:
    path = preset_path(name)
    if not path.is_file():
        raise ConfigError(
            "model",
            f"unknown preset {name!r} (no {path}); available: {', '.join(available_presets())}",
        )
    if name in chain:
        raise ConfigError("model", f"{path}: its defaults list loops ({' -> '.join(chain + (name,))})")
    own = yaml.safe_load(path.read_text())
    if not isinstance(own, dict):
        raise ConfigError("model", f"{path} does not hold a mapping")
    defaults = own.pop("defaults", None) or ["_self_"]
    if "_self_" not in defaults:  # Hydra's rule: without _self_, the file's own keys come last
        defaults = [*defaults, "_self_"]
    merged: dict[str, Any] = {}
    for entry in defaults:
        if not isinstance(entry, str) or "/" in entry or "@" in entry:
            raise ConfigError("model", f"{path}: a preset's defaults list names other presets of "
                              f"conf/model/ (and _self_), got {entry!r}")
        merged.update(own if entry == "_self_" else _compose_preset(entry, chain + (name,)))
    return merged


def spec_from_config(model_cfg: Mapping[str, Any] | str, **overrides: Any) -> ModelSpec:
    """Preset content (a Mapping, e.g. the composed `cfg.model`) or preset name + knob overrides.

    Overrides equal to None keep the preset's value (the root config's `rnn: null` etc.).
    """
    data = load_preset(model_cfg) if isinstance(model_cfg, str) else _plain(model_cfg)
    if not isinstance(data, dict):
        raise ConfigError(
            "model", f"expected a mapping or a preset name, got {type(model_cfg).__name__}"
        )
    data.pop(TARGET_KEY, None)  # the family's locator (conf/model/*.yaml), not a spec field
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ConfigError(
            f"model.{unknown[0]}", f"unknown model option; known: {', '.join(sorted(_FIELDS))}"
        )
    origin: dict[str, str] = {}
    for k, v in overrides.items():
        if k not in _FIELDS or k == "name":
            raise ConfigError(
                k, f"unknown model override; known: {', '.join(GRID_KNOBS)} (or any model.* field)"
            )
        if v is None:
            continue
        data[k] = _plain(v)
        origin[k] = k
    missing = [f.name for f in fields(ModelSpec) if f.default is MISSING and f.name not in data]
    if missing:
        raise ConfigError(f"model.{missing[0]}", "missing (required by the builder)")
    data = {k: _tuples(v) for k, v in data.items()}
    try:
        spec = ModelSpec(**data)
    except TypeError as exc:  # pragma: no cover - guarded by the checks above
        raise ConfigError("model", str(exc)) from exc
    return spec.validate(origin)


def spec_from_dict(data: Mapping[str, Any]) -> ModelSpec:
    """Inverse of `ModelSpec.to_dict` (used by checkpoints)."""
    return spec_from_config(dict(data))
