"""Parameter counts per report section in two conventions.

`paper`: Keras 2.3.1 `model.summary()` counting, as the FEQ report did (REFERENCE §5.1): BatchNorm
counts its two running statistics (4 per channel), an LSTM/GRU has one bias per direction, and a
GRU counts as Keras' `reset_after=False` cell whichever GRU flavour is built.
`torch`: `sum(p.numel())` of what is built (shared layers once).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from feq_lab.errors import ConfigError
from feq_lab.models.layers import KerasGRU
from feq_lab.models.protocol import SECTIONS

CONVENTIONS = ("paper", "torch")


def _own_count(module: nn.Module, convention: str) -> int:
    """Parameters held directly by `module` (not its children) in the given convention."""
    n = sum(p.numel() for p in module.parameters(recurse=False))
    if convention == "torch":
        return n
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return n + 2 * module.num_features  # running mean and variance
    if isinstance(module, (nn.LSTM, nn.GRU)):
        gates = 4 if isinstance(module, nn.LSTM) else 3
        directions = 2 if module.bidirectional else 1
        return n - gates * module.hidden_size * directions * module.num_layers  # one bias, not two
    if isinstance(module, KerasGRU):
        return n
    return n


def _count(roots: Iterable[nn.Module], convention: str, seen: set[int]) -> int:
    total = 0
    for root in roots:
        for m in root.modules():
            if id(m) in seen:
                continue
            seen.add(id(m))
            total += _own_count(m, convention)
    return total


def count_parameters(model: nn.Module, convention: str = "paper") -> dict[str, int]:
    """{encoder, bottleneck, rnn_transformer, decoder, total} for any `LearnedModel` (a section
    the family does not have counts 0)."""
    if convention not in CONVENTIONS:
        raise ConfigError(
            "convention", f"unknown counting convention {convention!r}; expected paper or torch"
        )
    sections = model.section_modules()  # type: ignore[operator]
    seen: set[int] = set()
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise RuntimeError(f"{type(model).__name__}: unknown section {unknown[0]!r}")
    counts = {name: _count(sections.get(name, ()), convention, seen) for name in SECTIONS}
    counts["total"] = sum(counts[name] for name in SECTIONS)
    leftover = _count([model], convention, seen)
    if leftover:  # a module outside every section would silently skew the report
        raise RuntimeError(f"{leftover} parameters belong to no section")
    return counts


def parameter_report(model: nn.Module) -> dict[str, dict[str, int]]:
    """Both conventions: {"paper": {...}, "torch": {...}}."""
    return {c: count_parameters(model, c) for c in CONVENTIONS}
