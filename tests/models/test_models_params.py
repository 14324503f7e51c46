"""Parameter counts of the five presets against REFERENCE §5.4 (both conventions)."""

from __future__ import annotations

import pytest

from feq_lab.models import PRESETS, build_model, count_parameters
from feq_lab.models.params import parameter_report

# (encoder, bottleneck K, bottleneck PT, rnn&transformer K, PT, decoder, total K, PT) — REFERENCE §5.4
REFERENCE_COUNTS = {
    "eqt": (34_672, 160_128, 158_336, 134_820, 135_140, 43_875, 373_495, 372_023),
    "leq": (1_289, 3_712, 3_328, 30_644, 30_964, 4_131, 39_776, 39_712),
    "feq1": (1_289, 3_712, 3_328, 26_964, 27_188, 4_131, 36_096, 35_936),
    "feq2": (1_289, 1_888, 1_696, 23_204, 23_364, 4_131, 30_512, 30_480),
    "feq3": (1_289, 1_888, 1_696, 24_772, 24_964, 4_131, 32_080, 32_080),
}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.mark.parametrize("preset", PRESETS)
def test_counts_match_reference_in_both_conventions(preset):
    enc, bk, bt, rk, rt, dec, tk, tt = REFERENCE_COUNTS[preset]
    model = build_model(preset)
    assert count_parameters(model, "paper") == {
        "encoder": enc,
        "bottleneck": bk,
        "rnn_transformer": rk,
        "decoder": dec,
        "total": tk,
    }
    assert count_parameters(model, "torch") == {
        "encoder": enc,
        "bottleneck": bt,
        "rnn_transformer": rt,
        "decoder": dec,
        "total": tt,
    }
    # the torch convention is literally sum(numel) of the built module (shared layers once)
    assert count_parameters(model, "torch")["total"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset", ["feq1", "feq2", "feq3"])
def test_paper_count_does_not_depend_on_gru_flavour(preset):
    fast = parameter_report(build_model(preset))
    keras = parameter_report(build_model(preset, gru_impl="keras"))
    assert keras["paper"] == fast["paper"]
    # the Keras cell has one bias per direction: 3u fewer torch parameters per GRU direction
    gru_directions = {"feq1": 4 + 2, "feq2": 2 + 2, "feq3": 0 + 2}[preset]
    assert fast["torch"]["total"] - keras["torch"]["total"] == 48 * gru_directions


def test_reference_gru_sizes():
    """REFERENCE §5.4: BiGRU 32→16 = 4,704, BiGRU 16→16 = 3,168, GRU 16→16 = 1,584 (Keras)."""
    one = count_parameters(build_model("feq2"), "paper")["rnn_transformer"]
    two = count_parameters(build_model("feq2", rnn_blocks=2), "paper")["rnn_transformer"]
    assert two - one == 3_168 + (32 * 16 + 16) + 4 * 16  # BiGRU + 1×1 conv 32→16 + BN(16)
    gru_pickers = count_parameters(build_model("feq2"), "paper")["rnn_transformer"]
    lstm_pickers = count_parameters(build_model("feq2", picker_rnn="lstm"), "paper")[
        "rnn_transformer"
    ]
    assert lstm_pickers - gru_pickers == 2 * (2_112 - 1_584)


def test_grid_knobs_change_only_their_section():
    base = count_parameters(build_model("feq3"), "paper")
    deeper = count_parameters(build_model("feq3", cnn_blocks=4), "paper")
    assert deeper["bottleneck"] == REFERENCE_COUNTS["leq"][1]  # extends the k 3,3,3,2 pattern
    assert {k: deeper[k] for k in ("encoder", "rnn_transformer", "decoder")} == {
        k: base[k] for k in ("encoder", "rnn_transformer", "decoder")
    }
    gru = count_parameters(build_model("feq3", rnn="bigru"), "paper")
    assert gru == count_parameters(build_model("feq2"), "paper")  # FEQ3 with BiGRU is FEQ2


def test_eqt_matches_seisbench_eqtransformer():
    sbm = pytest.importorskip("seisbench.models")
    peer = sbm.EQTransformer(lstm_blocks=2)
    ours = build_model("eqt")
    assert (
        count_parameters(ours, "torch")["total"]
        == sum(p.numel() for p in peer.parameters())
        == 372_023
    )
