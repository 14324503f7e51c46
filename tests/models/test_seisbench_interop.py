"""SeisBench interop both ways (issue 13): SeisBench EQTransformer(lstm_blocks=2) and PhaseNet
weights (seeded random, scaled so outputs vary) load into the lab's eqt / phasenet with the
same probabilities within 1e-4; a lab FEQ3 wrapped as a SeisBench WaveformModel annotates and
classifies an obspy Stream."""

from __future__ import annotations

import math

import numpy as np
import obspy
import pytest
import seisbench.models as sbm
import torch
from torch import nn

from feq_lab.data.labels import normalize
from feq_lab.models import PhaseNet, PickerModel, build_model, from_seisbench, to_seisbench
from feq_lab.models.params import count_parameters
from feq_lab.models.phasenet import running_max

ENZ_FROM_ZNE = [2, 1, 0]  # SeisBench's default component order is ZNE, the lab's E, N, Z


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Seeded random weights large enough that every output varies along the trace (at
    SeisBench's initialisation they are flat to ~1e-4, which would make a 1e-4 check vacuous)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            own = dict(module.named_parameters(recurse=False))
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=g))
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=g))
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=g))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=g))
                continue
            for name, p in own.items():
                if name in ("gamma",):
                    p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
                elif p.dim() == 1 or name in ("beta", "bh", "ba"):
                    p.copy_(0.3 * torch.randn(p.shape, generator=g))
                else:
                    fan_in = p.shape[0] if name.startswith("W") else p[0].numel()
                    p.copy_(1.5 * torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
    return model.eval()


def test_seisbench_eqtransformer_loads_with_equal_outputs():
    theirs = randomise(sbm.EQTransformer(lstm_blocks=2), seed=1)
    ours = from_seisbench(theirs)
    assert isinstance(ours, PickerModel) and ours.name == "eqt" and not ours.training
    assert count_parameters(ours, "torch")["total"] == sum(p.numel() for p in theirs.parameters())
    x = torch.randn(2, 3, 6000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = theirs(x)
        got = ours(x[:, ENZ_FROM_ZNE])
    for name, e, o in zip(("detection", "P", "S"), expected, got):
        assert float(e.std()) > 5e-3, f"{name} output is flat: the comparison would be vacuous"
        assert torch.allclose(o, e, atol=1e-4, rtol=0), name


@pytest.mark.parametrize("samples", [3001, 6000])
def test_seisbench_phasenet_loads_with_equal_outputs(samples):
    theirs = randomise(sbm.PhaseNet(), seed=3)
    ours = from_seisbench(theirs)
    assert isinstance(ours, PhaseNet)
    n = sum(p.numel() for p in sbm.PhaseNet().parameters())
    assert count_parameters(ours, "torch")["total"] == n == 268_443
    x = torch.randn(2, 3, samples, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        noise, p, s = theirs(x).unbind(1)  # SeisBench's class order N, P, S
        det, p_ours, s_ours = ours(x[:, ENZ_FROM_ZNE])
    assert float(p.std()) > 5e-3 and float(s.std()) > 5e-3
    assert torch.allclose(p_ours, p, atol=1e-4, rtol=0)
    assert torch.allclose(s_ours, s, atol=1e-4, rtol=0)
    # the config's detection (phase_span) from SeisBench's own P and S
    span = torch.minimum(running_max(p), running_max(s, reverse=True))
    assert torch.allclose(det, span, atol=1e-4, rtol=0)
    assert torch.allclose(1 - noise, p + s, atol=1e-6)  # noise_complement's identity


@pytest.mark.parametrize("family", ["eqt", "phasenet"])
def test_seisbench_weights_pair_loads(tmp_path, family):
    theirs = randomise(sbm.EQTransformer(lstm_blocks=2) if family == "eqt" else sbm.PhaseNet(), 5)
    theirs.save(tmp_path / family)  # SeisBench writes <base>.json + <base>.pt
    x = torch.randn(1, 3, 6000, generator=torch.Generator().manual_seed(6))
    for given in (tmp_path / f"{family}.pt", tmp_path / f"{family}.json", tmp_path / family):
        ours = from_seisbench(given)
        with torch.no_grad():
            assert torch.allclose(ours(x[:, ENZ_FROM_ZNE])[1], from_seisbench(theirs)(
                x[:, ENZ_FROM_ZNE])[1], atol=1e-6)


def test_a_lab_model_annotates_and_classifies_an_obspy_stream():
    torch.manual_seed(0)
    model = build_model("feq3").eval()
    wrapped = to_seisbench(model)
    rng = np.random.default_rng(0)
    start = obspy.UTCDateTime(2020, 1, 1)
    data = rng.standard_normal((3, 6000)).astype(np.float32) * 100.0
    stream = obspy.Stream([
        obspy.Trace(data[i], header={"network": "XX", "station": "LAB", "channel": f"HH{c}",
                                     "sampling_rate": 100.0, "starttime": start})
        for i, c in enumerate("ENZ")])
    annotations = wrapped.annotate(stream)
    channels = sorted(tr.stats.channel for tr in annotations)
    assert channels == ["FeqLabModel_Detection", "FeqLabModel_P", "FeqLabModel_S"]
    # one window exactly: the annotation is the lab model's own output on that window
    with torch.no_grad():
        det, p, s = model(torch.from_numpy(normalize(data[None])))
    for name, expected in (("Detection", det), ("P", p), ("S", s)):
        trace = annotations.select(channel=f"FeqLabModel_{name}")[0]
        assert trace.stats.sampling_rate == 100.0 and trace.stats.starttime == start
        np.testing.assert_allclose(trace.data, expected[0].numpy(), atol=1e-5)
    out = wrapped.classify(stream.copy(), P_threshold=0.0001, S_threshold=0.0001,
                           detection_threshold=0.0001)
    assert out.creator == "FeqLabModel" and len(out.picks) > 0 and len(out.detections) > 0
    assert {pick.phase for pick in out.picks} <= {"P", "S"}
