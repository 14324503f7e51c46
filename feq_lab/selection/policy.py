"""Selection policies: pure functions from tracked runs to one champion, with the reasons.

Why pure: the decision must be reproducible and testable on hand-made records; only the entry
point (`feq_lab.select`) reads MLflow, and only through `feq_lab.tracking`.

Decide on validation, report on test: every key a policy reads (objectives, constraints, tie
breakers) must not be a `test/*` key — the test split is reported for every run and used for
nothing, so a policy naming one is refused with a ConfigError.

Every policy first keeps the FINISHED runs that are candidates (classical baselines such as
`model=stalta` are excluded: they are a reference row, not a deployable picker), checks that
every key it needs is present, applies the optional constraints, then ranks what is left:
- `constraints`: lexicographic objectives (the study's reasoning: small and fast enough, then
  fewest detection false negatives, ties broken by S F1); with `noise_guard`, the leader must
  beat the others outside the noise (paired tests on the validation traces,
  `evaluation/significance.py`), else the smallest/fastest of those it does not beat wins;
- `pareto`: the non-dominated set on the objectives, the knee = the front point closest to the
  ideal point after scaling each objective to [0, 1] over the front;
- `weighted`: a weighted sum of min-max scaled objectives (1 = best candidate).
Remaining ties go to `tie_breakers`, then to the run label and id, so the answer is stable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from feq_lab.errors import ConfigError, SelectionError
from feq_lab.evaluation.significance import paired_bootstrap, paired_missed
from feq_lab.selection.tables import param, variant_label
from feq_lab.tracking.keys import check_metric_key
from feq_lab.tracking.records import RunRecord

POLICIES = ("constraints", "pareto", "weighted")
GOALS = ("min", "max")
REPORT_ONLY_PREFIXES = ("test/", "test_")   # reported, never decides


@dataclass(frozen=True)
class Objective:
    """A metric key and whether smaller or larger is better."""

    key: str
    goal: str = "max"
    weight: float = 1.0
    tolerance_rel: float = 0.0  # noise guard `prefer`: within this fraction of the best = equal

    def better(self, a: float, b: float) -> bool:
        """True when value `a` is strictly better than `b`."""
        return a < b if self.goal == "min" else a > b

    def sort_value(self, v: float) -> float:
        """A value whose ascending order puts the best first."""
        return v if self.goal == "min" else -v

    def __str__(self) -> str:
        within = f", within {self.tolerance_rel:.0%} = equal" if self.tolerance_rel else ""
        return f"{self.key} ({self.goal}{within})"

    def near_best(self, values: Sequence[float]) -> list[bool]:
        """Which `values` count as the best one: equal to it, or within `tolerance_rel` of it."""
        best = min(values) if self.goal == "min" else max(values)
        slack = abs(best) * self.tolerance_rel
        return [abs(v - best) <= slack for v in values]


@dataclass(frozen=True)
class Constraint:
    """A bound on one metric, absolute (`max`, `min`) or relative to the best candidate.

    `max_rel: 1.5` on latency keeps runs at most 1.5 x the fastest candidate; `min_rel: 0.98` on
    an F1 keeps runs within 2 % of the best one. Why relative bounds: absolute latencies depend on
    the machine, "near the fastest" does not.
    """

    key: str
    max: float | None = None
    min: float | None = None
    max_rel: float | None = None
    min_rel: float | None = None
    # soft: applied after the hard constraints, to the runs they kept; when none of those meets
    # it, the ones nearest the bound pass instead, and when none has the metric (a sweep that
    # did not measure it) it is skipped, each said in the reasons. Why: a requirement such as
    # the monitor's real-time P accuracy should steer the choice, not leave a study without one.
    soft: bool = False

    def bounds(self, values: Sequence[float]) -> tuple[float, float]:
        """The (low, high) interval a value must fall in, given all candidates' values."""
        low, high = -math.inf, math.inf
        if self.max is not None:
            high = min(high, float(self.max))
        if self.min is not None:
            low = max(low, float(self.min))
        if self.max_rel is not None:
            high = min(high, float(self.max_rel) * min(values))
        if self.min_rel is not None:
            low = max(low, float(self.min_rel) * max(values))
        return low, high

    def __str__(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f">= {_fmt(self.min)}")
        if self.max is not None:
            parts.append(f"<= {_fmt(self.max)}")
        if self.min_rel is not None:
            parts.append(f">= {_fmt(self.min_rel)} x best")
        if self.max_rel is not None:
            parts.append(f"<= {_fmt(self.max_rel)} x best")
        return f"{self.key} " + " and ".join(parts) + (" (soft)" if self.soft else "")

    def shortfall(self, value: float, low: float, high: float) -> float:
        """How far `value` lies outside [low, high] (0 inside; inf when missing)."""
        if not _finite(value):
            return math.inf
        return max(low - value, value - high, 0.0)


@dataclass
class CandidateResult:
    """How one run fared: `status` is chosen | feasible | dominated | rejected | baseline."""

    run: RunRecord
    status: str
    rank: int | None = None
    score: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self, keys: Iterable[str]) -> dict[str, Any]:
        return {
            "run_id": self.run.run_id,
            "name": variant_label(self.run),
            "run_name": self.run.name,
            "status": self.status,
            "rank": self.rank,
            "score": self.score,
            "notes": list(self.notes),
            "metrics": {k: self.run.metrics.get(k) for k in keys},
        }


@dataclass
class Decision:
    """The champion, every candidate's fate and the human-readable reasons."""

    policy: str
    champion: RunRecord
    candidates: list[CandidateResult]
    reasons: list[str]
    keys: list[str]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (what `reports/selection.json` holds)."""
        champ = self.champion
        return {
            "policy": self.policy,
            "settings": self.settings,
            "champion": {
                "run_id": champ.run_id,
                "name": variant_label(champ),
                "run_name": champ.name,
                "params": dict(sorted(champ.params.items())),
                "metrics": {k: champ.metrics.get(k) for k in self.keys},
            },
            "reasons": list(self.reasons),
            "candidates": [c.to_dict(self.keys) for c in self.candidates],
        }


# --------------------------------------------------------------------------- parsing config


def parse_objectives(items: Any, where: str, tolerance: bool = False) -> list[Objective]:
    """`[{key: test/s_f1, goal: max, weight: 1}, ...]` -> objectives (ConfigError on bad items).
    `tolerance`: the list takes `tolerance_rel` (only the noise guard's `prefer` uses it; given
    anywhere else it would be silently ignored, so it is refused there, as are unknown fields)."""
    if items is None:
        return []
    if isinstance(items, Mapping):  # {key: goal} shorthand
        items = [{"key": k, "goal": g} for k, g in items.items()]
    fields = {"key", "goal", "weight"} | ({"tolerance_rel"} if tolerance else set())
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or "key" not in item:
            raise ConfigError(f"{where}[{i}]", f"expected a mapping with 'key', got {item!r}")
        unknown = set(item) - fields
        if unknown:
            hint = " (tolerance_rel applies to select.noise_guard.prefer only)" if (
                "tolerance_rel" in unknown) else ""
            raise ConfigError(f"{where}[{i}]", f"unknown fields {sorted(unknown)}{hint}")
        goal = str(item.get("goal", "max"))
        if goal not in GOALS:
            raise ConfigError(f"{where}[{i}].goal", f"must be one of {GOALS}, got {goal!r}")
        weight = float(item.get("weight", 1.0))
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"{where}[{i}].weight", f"must be a finite number >= 0, got {weight}")
        tol = float(item.get("tolerance_rel", 0.0))
        if not math.isfinite(tol) or not 0 <= tol < 1:
            raise ConfigError(f"{where}[{i}].tolerance_rel", f"must lie in [0, 1), got {tol}")
        out.append(Objective(str(item["key"]), goal, weight, tol))
    return out


def parse_constraints(items: Any, where: str = "select.constraints") -> list[Constraint]:
    """`[{key: size/model_mb, max: 1.0}, ...]` -> constraints; a bound-less item is an error."""
    if items is None:
        return []
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or "key" not in item:
            raise ConfigError(f"{where}[{i}]", f"expected a mapping with 'key', got {item!r}")
        unknown = set(item) - {"key", "max", "min", "max_rel", "min_rel", "soft"}
        if unknown:
            raise ConfigError(f"{where}[{i}]", f"unknown fields {sorted(unknown)}")
        bounds = {k: item.get(k) for k in ("max", "min", "max_rel", "min_rel")}
        if all(v is None for v in bounds.values()):
            raise ConfigError(f"{where}[{i}]", f"constraint on {item['key']} has no bound")
        soft = item.get("soft", False)
        if not isinstance(soft, bool):
            raise ConfigError(f"{where}[{i}].soft", f"must be true or false, got {soft!r}")
        out.append(Constraint(str(item["key"]), **{k: _num(v, f"{where}[{i}].{k}")
                                                    for k, v in bounds.items()}, soft=soft))
    return out


def _num(v: Any, key: str) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be a number, got {v!r}") from None


# --------------------------------------------------------------------------- shared steps


def split_candidates(
    runs: Sequence[RunRecord], exclude: Mapping[str, Sequence[str]] | None = None
) -> tuple[list[RunRecord], list[RunRecord]]:
    """FINISHED runs split into (candidates, baselines); error when nothing can be chosen.

    `exclude` maps a param to values that mark a run as a baseline (default: model=stalta).
    """
    exclude = {"model": ["stalta"]} if exclude is None else exclude
    if not runs:
        raise SelectionError("no runs found in the sweep: nothing to select from")
    finished = [r for r in runs if r.status == "FINISHED"]
    if not finished:
        listing = ", ".join(f"{variant_label(r)} ({r.run_id[:8]}) {r.status}" for r in runs)
        raise SelectionError(f"no FINISHED run in the sweep; runs found: {listing}")
    baselines = [r for r in finished
                 if any(param(r, p) in {str(v) for v in vals} for p, vals in exclude.items())]
    candidates = [r for r in finished if r not in baselines]
    if not candidates:
        listing = ", ".join(f"{variant_label(r)} ({r.run_id[:8]})" for r in finished)
        raise SelectionError(
            f"every FINISHED run is a baseline excluded by {dict(exclude)}: {listing}")
    return candidates, baselines


def require_metrics(runs: Sequence[RunRecord], keys: Iterable[str]) -> None:
    """Raise naming each run and each key it lacks (NaN counts as missing: a failed metric)."""
    keys = list(dict.fromkeys(keys))
    problems = []
    for r in runs:
        missing = [k for k in keys if not _finite(r.metrics.get(k))]
        if missing:
            problems.append(f"run {variant_label(r)} ({r.run_id}) lacks {', '.join(missing)}")
    if problems:
        raise SelectionError("missing metrics needed by the policy: " + "; ".join(problems))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def apply_constraints(
    runs: Sequence[RunRecord], constraints: Sequence[Constraint]
) -> tuple[list[RunRecord], dict[str, list[str]], list[str]]:
    """(feasible runs, notes per rejected run id, reasons); hard bounds computed over all
    `runs`, then each soft constraint over the runs still feasible (`Constraint.soft`)."""
    rejected: dict[str, list[str]] = {}
    reasons = []
    for c in constraints:
        if c.soft:
            continue
        values = [r.metrics[c.key] for r in runs]
        low, high = c.bounds(values)
        out = []
        for r in runs:
            v = r.metrics[c.key]
            if v < low or v > high:
                why = f"{c.key}={_fmt(v)} outside [{_fmt(low)}, {_fmt(high)}]"
                rejected.setdefault(r.run_id, []).append(why)
                out.append(f"{variant_label(r)} ({_fmt(v)})")
        reasons.append(f"constraint {c} (bound [{_fmt(low)}, {_fmt(high)}]): "
                       + (f"rejects {', '.join(out)}" if out else "every candidate passes"))
    feasible = [r for r in runs if r.run_id not in rejected]
    if not feasible:
        detail = "; ".join(f"{_run_name(runs, rid)}: {', '.join(n)}" for rid, n in rejected.items())
        raise SelectionError(f"no run satisfies the constraints: {detail}")
    for c in constraints:
        if c.soft:
            feasible, why = _apply_soft(feasible, c, rejected)
            reasons.append(why)
    return feasible, rejected, reasons


def _apply_soft(runs: list[RunRecord], c: Constraint,
                rejected: dict[str, list[str]]) -> tuple[list[RunRecord], str]:
    """(runs kept, reason) for one soft constraint (see `Constraint.soft`); notes the rejected."""
    values = [r.metrics.get(c.key, math.nan) for r in runs]
    measured = [v for v in values if _finite(v)]
    if not measured:
        return runs, f"constraint {c}: not measured on any candidate, skipped"
    low, high = c.bounds(measured)
    short = [c.shortfall(v, low, high) for v in values]
    best = min(short)
    keep = [s <= best for s in short]
    label = f"constraint {c} (bound [{_fmt(low)}, {_fmt(high)}])"
    if best > 0:
        label += (f": no candidate meets it, so the nearest ({_fmt(best)} short) pass")
    out = [f"{variant_label(r)} ({_fmt(v)})" for r, v, k in zip(runs, values, keep) if not k]
    for r, v, k in zip(runs, values, keep):
        if not k:
            rejected.setdefault(r.run_id, []).append(
                f"{c.key}={_fmt(v)} outside [{_fmt(low)}, {_fmt(high)}] (soft)")
    kept = [r for r, k in zip(runs, keep) if k]
    return kept, label + (f"; rejects {', '.join(out)}" if out else "; every candidate passes")


def _run_name(runs: Sequence[RunRecord], run_id: str) -> str:
    r = next(r for r in runs if r.run_id == run_id)
    return f"{variant_label(r)} ({r.run_id[:8]})"


def lexicographic_key(objectives: Sequence[Objective]):
    """Sort key: objectives in order, then the label and id (stable, deterministic)."""
    def key(r: RunRecord):
        return tuple(o.sort_value(r.metrics[o.key]) for o in objectives) + (variant_label(r), r.run_id)
    return key


def explain_order(ranked: Sequence[RunRecord], objectives: Sequence[Objective]) -> str:
    """Why the first run beats the second: the first objective that separates them."""
    if len(ranked) < 2:
        return f"{variant_label(ranked[0])} is the only feasible candidate"
    a, b = ranked[0], ranked[1]
    for i, o in enumerate(objectives):
        va, vb = a.metrics[o.key], b.metrics[o.key]
        if va != vb:
            tie = ("" if i == 0 else "tied on " + ", ".join(
                f"{p.key}={_fmt(a.metrics[p.key])}" for p in objectives[:i]) + "; ")
            return (f"{variant_label(a)} beats the runner-up {variant_label(b)}: {tie}"
                    f"{o.key} {_fmt(va)} vs {_fmt(vb)} ({o.goal})")
    return (f"{variant_label(a)} and {variant_label(b)} tie on every objective; the run label/id order decides "
            f"({variant_label(a)} < {variant_label(b)})")


# --------------------------------------------------------------------------- the policies


def refuse_test_keys(cfg: Mapping[str, Any]) -> None:
    """ConfigError naming the first policy entry that reads a `test/*` key."""
    for section in ("constraints", "objectives", "tie_breakers"):
        items = cfg.get(section) or []
        if isinstance(items, Mapping):
            items = [{"key": k} for k in items]
        for i, item in enumerate(items):
            key = str(item.get("key", "")) if isinstance(item, Mapping) else ""
            if key.startswith(REPORT_ONLY_PREFIXES):
                raise ConfigError(
                    f"select.{section}[{i}].key",
                    f"{key!r} is a test-split metric: test is reported, never used to decide. "
                    f"Use the validation key {'val/' + key.split('/', 1)[1]!r}")
    guard = cfg.get("noise_guard") or {}
    for i, item in enumerate(guard.get("prefer") or []):
        key = str(item.get("key", "")) if isinstance(item, Mapping) else ""
        if key.startswith(REPORT_ONLY_PREFIXES):
            raise ConfigError(f"select.noise_guard.prefer[{i}].key",
                              f"{key!r} is a test-split metric: never used to decide")


def check_known_keys(cfg: Mapping[str, Any]) -> None:
    """ConfigError naming the first policy entry whose key no run logs (`tracking/keys.py`).

    Checked by the entry point at start-up, not inside `select`: the policies themselves are pure
    functions over any records (tests rank hand-made keys)."""
    for section in ("constraints", "objectives", "tie_breakers"):
        items = cfg.get(section) or []
        if isinstance(items, Mapping):
            items = [{"key": k} for k in items]
        for i, item in enumerate(items):
            if isinstance(item, Mapping) and "key" in item:
                check_metric_key(item["key"], f"select.{section}[{i}].key")
    for i, item in enumerate((cfg.get("noise_guard") or {}).get("prefer") or []):
        if isinstance(item, Mapping) and "key" in item:
            check_metric_key(item["key"], f"select.noise_guard.prefer[{i}].key")


@dataclass(frozen=True)
class NoiseGuard:
    """`constraints` policy option: the leader wins only if it beats a rival outside the noise.

    A rival is *tied* with the leader when no paired test on the validation traces (F1 of each
    output by paired bootstrap, missed earthquakes by McNemar) says the leader is better at
    `level`; among the leader and its tied rivals, `prefer` (smaller, faster) decides.
    """

    outputs: tuple[str, ...] = ("detection", "p", "s")
    level: float = 0.95
    n_boot: int = 1000
    prefer: tuple[Objective, ...] = ()


def parse_noise_guard(cfg: Any) -> NoiseGuard | None:
    if not cfg or not cfg.get("enabled", True):
        return None
    outputs = tuple(str(o) for o in cfg.get("outputs", ("detection", "p", "s")))
    bad = [o for o in outputs if o not in ("detection", "p", "s")]
    if bad:
        raise ConfigError("select.noise_guard.outputs", f"unknown outputs {bad}")
    level = float(cfg.get("level", 0.95))
    if not 0.5 <= level < 1:
        raise ConfigError("select.noise_guard.level", f"must lie in [0.5, 1), got {level}")
    prefer = tuple(parse_objectives(cfg.get("prefer"), "select.noise_guard.prefer", tolerance=True))
    if not prefer:
        raise ConfigError("select.noise_guard.prefer", "name what decides a tie (e.g. latency)")
    return NoiseGuard(outputs, level, int(cfg.get("n_boot", 1000)), prefer)


def select(runs: Sequence[RunRecord], cfg: Mapping[str, Any],
           outcomes: Mapping[str, Any] | None = None) -> Decision:
    """Apply the policy described by a `select` config mapping (see conf/select/*.yaml).

    `outcomes` (run id -> validation `significance.Outcomes`) feeds the `noise_guard`.
    """
    policy = str(cfg.get("policy", "constraints"))
    if policy not in POLICIES:
        raise ConfigError("select.policy", f"must be one of {POLICIES}, got {policy!r}")
    refuse_test_keys(cfg)
    exclude = cfg.get("exclude")
    constraints = parse_constraints(cfg.get("constraints"))
    objectives = parse_objectives(cfg.get("objectives"), "select.objectives")
    tie_breakers = parse_objectives(cfg.get("tie_breakers"), "select.tie_breakers")
    if not objectives:
        raise ConfigError("select.objectives", "at least one objective is needed")
    guard = parse_noise_guard(cfg.get("noise_guard"))
    if policy != "constraints" and guard is not None:
        raise ConfigError("select.noise_guard", "only the constraints policy has a noise guard")
    if policy == "constraints":
        return select_constraints(runs, objectives=objectives, constraints=constraints,
                                  tie_breakers=tie_breakers, exclude=exclude, guard=guard,
                                  outcomes=outcomes)
    fn = {"pareto": select_pareto, "weighted": select_weighted}[policy]
    return fn(runs, objectives=objectives, constraints=constraints,
              tie_breakers=tie_breakers, exclude=exclude)


def _prepare(runs, objectives, constraints, tie_breakers, exclude, policy):
    """Shared first steps; returns (candidates, baselines, feasible, rejected, reasons, keys)."""
    candidates, baselines = split_candidates(runs, exclude)
    keys = list(dict.fromkeys([c.key for c in constraints] + [o.key for o in objectives]
                              + [o.key for o in tie_breakers]))
    soft = {c.key for c in constraints if c.soft}  # may be missing: see Constraint.soft
    require_metrics(candidates, [k for k in keys if k not in soft])
    reasons = [(f"policy {policy}: {len(candidates)} candidate run(s) among {len(runs)} "
                f"({len(baselines)} baseline(s) excluded: "
                f"{', '.join(variant_label(b) for b in baselines) or 'none'})")]
    feasible, rejected, why = apply_constraints(candidates, constraints)
    reasons += why
    return candidates, baselines, feasible, rejected, reasons, keys


def _results(candidates, baselines, rejected, ranked, status_of, score_of=None, notes_of=None):
    rank = {r.run_id: i + 1 for i, r in enumerate(ranked)}
    out = []
    for r in sorted(candidates, key=lambda r: (rank.get(r.run_id, 10**9), variant_label(r), r.run_id)):
        if r.run_id in rejected:
            out.append(CandidateResult(r, "rejected", notes=rejected[r.run_id]))
        else:
            out.append(CandidateResult(
                r, status_of(r), rank=rank.get(r.run_id),
                score=None if score_of is None else score_of(r),
                notes=[] if notes_of is None else notes_of(r)))
    out += [CandidateResult(b, "baseline", notes=["classical baseline, reference only"])
            for b in baselines]
    return out


def select_constraints(runs, *, objectives, constraints=(), tie_breakers=(), exclude=None,
                       guard: NoiseGuard | None = None, outcomes=None):
    """Keep runs within every bound, then rank lexicographically by the objectives; with a
    noise guard, the leader must beat its rivals outside the noise (see `NoiseGuard`)."""
    order = list(objectives) + list(tie_breakers)
    candidates, baselines, feasible, rejected, reasons, keys = _prepare(
        runs, objectives, constraints, tie_breakers, exclude, "constraints")
    if guard is not None:
        keys = list(dict.fromkeys(keys + [o.key for o in guard.prefer]))
        require_metrics(candidates, [o.key for o in guard.prefer])
    ranked = sorted(feasible, key=lexicographic_key(order))
    reasons.append(f"feasible: {', '.join(variant_label(r) for r in ranked)}; ranked by "
                   + ", then ".join(str(o) for o in order))
    reasons.append(explain_order(ranked, order))
    notes: dict[str, list[str]] = {}
    if guard is not None and len(ranked) > 1:
        ranked, why, notes = apply_noise_guard(ranked, guard, outcomes or {})
        reasons += why
    champ = ranked[0]
    results = _results(candidates, baselines, rejected, ranked,
                       lambda r: "chosen" if r is champ else "feasible",
                       notes_of=lambda r: notes.get(r.run_id, []))
    settings = _settings(objectives, constraints, tie_breakers)
    if guard is not None:
        settings["noise_guard"] = {"outputs": list(guard.outputs), "level": guard.level,
                                   "prefer": [{"key": o.key, "goal": o.goal,
                                               "tolerance_rel": o.tolerance_rel}
                                              for o in guard.prefer]}
    return Decision("constraints", champ, results, reasons, keys, settings)


def apply_noise_guard(ranked: Sequence[RunRecord], guard: NoiseGuard,
                      outcomes: Mapping[str, Any]) -> tuple[list[RunRecord], list[str],
                                                            dict[str, list[str]]]:
    """(re-ranked runs, reasons, notes per run): the leader keeps first place only when it beats
    every rival it would displace outside the noise; otherwise the tied set is ordered by
    `guard.prefer` (then the original rank)."""
    missing = [variant_label(r) for r in ranked if r.run_id not in outcomes]
    if missing:
        raise SelectionError("the noise guard needs the per-trace validation outcomes "
                             f"(val_outcomes.npz) of every feasible run; missing for "
                             f"{', '.join(missing)}")
    leader = ranked[0]
    tied, notes = [leader], {}
    for rival in ranked[1:]:
        wins = []
        for out in guard.outputs:
            f1 = paired_bootstrap(outcomes[leader.run_id], outcomes[rival.run_id], out,
                                  guard.n_boot, guard.level)
            miss = paired_missed(outcomes[leader.run_id], outcomes[rival.run_id], out,
                                 guard.level)
            if f1.significant and f1.difference > 0:
                wins.append(f"{out} F1 +{f1.difference:.3f} (p={f1.p_value:.3g})")
            if miss.significant and miss.difference < 0:
                wins.append(f"{out} missed {miss.difference:+.0f} (McNemar p={miss.p_value:.3g})")
        if wins:
            notes[rival.run_id] = [f"{variant_label(leader)} beats it outside the noise: "
                                   + "; ".join(wins)]
        else:
            tied.append(rival)
            notes[rival.run_id] = [(f"not separable from {variant_label(leader)} on "
                                    f"validation (paired tests, level {guard.level:g})")]
    position = {r.run_id: i for i, r in enumerate(ranked)}
    reordered = prefer_order(tied, guard.prefer, position)
    rest = [r for r in ranked if r not in tied]
    why = []
    if len(tied) == 1:
        why.append(f"noise guard: {variant_label(leader)} beats every other feasible run outside "
                   f"the noise on validation (paired bootstrap / McNemar, level {guard.level:g})")
    else:
        why.append(f"noise guard: {variant_label(leader)} is not separable on validation from "
                   f"{', '.join(variant_label(r) for r in tied[1:])} (paired bootstrap / McNemar, "
                   f"level {guard.level:g}); among these the choice goes by "
                   + ", then ".join(str(o) for o in guard.prefer)
                   + f": {variant_label(reordered[0])}")
    return reordered + rest, why, notes


def prefer_order(tied: Sequence[RunRecord], prefer: Sequence[Objective],
                 position: Mapping[str, int]) -> list[RunRecord]:
    """`tied` ordered by `prefer`, one key after the other: runs within a key's `tolerance_rel`
    of its best value count as equal on it and go on to the next key (then the original rank).

    Why a tolerance: a latency re-measured on the same machine moves by a few percent, so two
    models 1% apart in latency are not "faster" and "slower" — in two clean runs of the default
    study FEQ3 and FEQ3 rnn=gru swapped places at 1.13 vs 1.12 and 0.90 vs 0.91 ms, and with it
    the champion. Equal within the tolerance, the next key (size) decides, the same way twice."""
    pool, order = list(tied), []
    while pool:
        group = pool
        for o in prefer:
            near = o.near_best([r.metrics[o.key] for r in group])
            if any(near):  # (a NaN is never near; all NaN: the key cannot decide)
                group = [r for r, keep in zip(group, near) if keep]
        first = min(group, key=lambda r: position[r.run_id])
        order.append(first)
        pool = [r for r in pool if r is not first]
    return order


def dominates(a: RunRecord, b: RunRecord, objectives: Sequence[Objective]) -> bool:
    """a is no worse than b on every objective and strictly better on one."""
    strictly = False
    for o in objectives:
        va, vb = a.metrics[o.key], b.metrics[o.key]
        if o.better(vb, va):
            return False
        strictly = strictly or o.better(va, vb)
    return strictly


def pareto_front(runs: Sequence[RunRecord], objectives: Sequence[Objective]) -> list[RunRecord]:
    """The non-dominated runs (duplicates of one point all stay on the front)."""
    return [r for r in runs if not any(dominates(o, r, objectives) for o in runs if o is not r)]


def _scaled(runs: Sequence[RunRecord], o: Objective) -> dict[str, float]:
    """Each run's value scaled to [0, 1] over `runs`, 0 = best; a flat objective scales to 0."""
    vals = [r.metrics[o.key] for r in runs]
    lo, hi = min(vals), max(vals)
    if hi == lo:
        return {r.run_id: 0.0 for r in runs}
    best = lo if o.goal == "min" else hi
    return {r.run_id: abs(r.metrics[o.key] - best) / (hi - lo) for r in runs}


def select_pareto(runs, *, objectives, constraints=(), tie_breakers=(), exclude=None):
    """Non-dominated set on the objectives; the knee = the point closest to the ideal one."""
    candidates, baselines, feasible, rejected, reasons, keys = _prepare(
        runs, objectives, constraints, tie_breakers, exclude, "pareto")
    front = pareto_front(feasible, objectives)
    scaled = {o.key: _scaled(front, o) for o in objectives}
    dist = {r.run_id: math.sqrt(sum((o.weight * scaled[o.key][r.run_id]) ** 2
                                    for o in objectives)) for r in front}
    ranked = sorted(front, key=lambda r: (round(dist[r.run_id], 12),)
                    + lexicographic_key(list(tie_breakers))(r))
    champ = ranked[0]
    dominated = [r for r in feasible if r not in front]
    reasons.append(f"objectives: {', '.join(str(o) for o in objectives)}; non-dominated: "
                   f"{', '.join(variant_label(r) for r in front)}"
                   + (f"; dominated: {', '.join(variant_label(r) for r in dominated)}" if dominated else ""))
    reasons.append(f"knee = front point nearest the ideal point (each objective scaled to [0, 1] "
                   f"over the front): {variant_label(champ)} at distance {dist[champ.run_id]:.4g}")
    if len(ranked) > 1:
        nxt = ranked[1]
        if round(dist[nxt.run_id], 12) == round(dist[champ.run_id], 12):
            reasons.append(f"tie in distance with {variant_label(nxt)} broken by "
                           + (", ".join(str(o) for o in tie_breakers) or "run label/id"))
        else:
            reasons.append(f"runner-up {variant_label(nxt)} at distance {dist[nxt.run_id]:.4g}")

    def notes(r):
        if r in dominated:
            by = [variant_label(o) for o in feasible if dominates(o, r, objectives)]
            return [f"dominated by {', '.join(by)}"]
        return []

    results = _results(candidates, baselines, rejected, ranked,
                       lambda r: "chosen" if r is champ else ("feasible" if r in front
                                                              else "dominated"),
                       score_of=lambda r: dist.get(r.run_id), notes_of=notes)
    return Decision("pareto", champ, results, reasons, keys,
                    _settings(objectives, constraints, tie_breakers))


def select_weighted(runs, *, objectives, constraints=(), tie_breakers=(), exclude=None):
    """Weighted mean of objectives scaled to [0, 1] over the feasible runs (1 = best)."""
    candidates, baselines, feasible, rejected, reasons, keys = _prepare(
        runs, objectives, constraints, tie_breakers, exclude, "weighted")
    total_w = sum(o.weight for o in objectives)
    if total_w <= 0:
        raise ConfigError("select.objectives", "weights sum to 0")
    scaled = {o.key: _scaled(feasible, o) for o in objectives}
    score = {r.run_id: sum(o.weight * (1.0 - scaled[o.key][r.run_id]) for o in objectives)
             / total_w for r in feasible}
    ranked = sorted(feasible, key=lambda r: (-round(score[r.run_id], 12),)
                    + lexicographic_key(list(tie_breakers))(r))
    champ = ranked[0]
    reasons.append("score = weighted mean of objectives scaled to [0, 1] over the feasible runs "
                   "(1 = best): " + ", ".join(f"{o.key} ({o.goal}) x {_fmt(o.weight)}"
                                              for o in objectives))
    reasons.append(f"{variant_label(champ)} scores {score[champ.run_id]:.4f}"
                   + (f", runner-up {variant_label(ranked[1])} {score[ranked[1].run_id]:.4f}"
                      if len(ranked) > 1 else ""))
    if len(ranked) > 1 and round(score[ranked[1].run_id], 12) == round(score[champ.run_id], 12):
        reasons.append("tie in score broken by "
                       + (", ".join(str(o) for o in tie_breakers) or "run label/id"))
    results = _results(candidates, baselines, rejected, ranked,
                       lambda r: "chosen" if r is champ else "feasible",
                       score_of=lambda r: score.get(r.run_id))
    return Decision("weighted", champ, results, reasons, keys,
                    _settings(objectives, constraints, tie_breakers))


def _settings(objectives, constraints, tie_breakers) -> dict[str, Any]:
    return {
        "objectives": [{"key": o.key, "goal": o.goal, "weight": o.weight} for o in objectives],
        "constraints": [{k: v for k, v in vars(c).items() if v is not None} for c in constraints],
        "tie_breakers": [{"key": o.key, "goal": o.goal} for o in tie_breakers],
    }


def _fmt(v: float) -> str:
    """Compact number formatting for reasons (integers without decimals)."""
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.4g}"
