"""The two decoding protocols on the same stored probabilities (issue 14).

    python bench/protocols.py RUN_DIR/test_probabilities.npz

Prints detection / P / S F1, FN/FP counts and pick MAE under `eval.protocol` lab and eqt at a
few threshold triples (the study's 0.5/0.1/0.1, EQT's tester 0.2/0.1/0.1, 0.5/0.3/0.3), the
number of traces whose S pick is not after the P pick, and each protocol's best grid F1.
"""

from __future__ import annotations

import argparse

import yaml

from feq_lab.evaluation.metrics import evaluate
from feq_lab.evaluation.picks import extract_picks
from feq_lab.evaluation.probabilities import load_probabilities
from feq_lab.evaluation.thresholds import threshold_grid
from feq_lab.paths import CONF_DIR

TRIPLES = ((0.5, 0.1, 0.1), (0.2, 0.1, 0.1), (0.5, 0.3, 0.3))
COUNTS = ("detection_fn", "detection_fp", "p_fn", "s_fn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probabilities")
    args = parser.parse_args()
    probs = load_probabilities(args.probabilities)
    print(f"{len(probs.truth)} traces ({int(probs.truth.is_earthquake.sum())} earthquakes)")
    for det, p, s in TRIPLES:
        th = {"detection": det, "p": p, "s": s}
        for protocol in ("lab", "eqt"):
            m = evaluate(probs, th, protocol=protocol)
            picks = extract_picks(probs.det, probs.p, probs.s, th, protocol=protocol)
            s_first = sum(pk.p_sample is not None and pk.s_sample is not None
                          and pk.s_sample <= pk.p_sample for pk in picks)
            print(f"{det}/{p}/{s} {protocol}: F1 det {m['detection_f1']:.3f} P {m['p_f1']:.3f} "
                  f"S {m['s_f1']:.3f}; " + " ".join(f"{k} {m[k]:.0f}" for k in COUNTS)
                  + f"; MAE P {m['p_residual_mae_s']:.3f} s S {m['s_residual_mae_s']:.3f} s;"
                  f" S not after P: {s_first}")
    grid = yaml.safe_load((CONF_DIR / "eval" / "default.yaml").read_text())["threshold_grid"]
    for protocol in ("lab", "eqt"):
        table = threshold_grid(probs, grid, protocol=protocol)
        print(f"{protocol}: best grid F1 det {table.detection_f1.max():.3f} "
              f"P {table.p_f1.max():.3f} S {table.s_f1.max():.3f}")


if __name__ == "__main__":
    main()
