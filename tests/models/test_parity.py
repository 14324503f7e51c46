"""One parity harness: every way the lab runs a model computes the reference's function.

Reference: `PickerModel` built with `ModelOptions.reference()` (readable GRU loop, reference
separable stages, one decoder at a time). Compared with it, for every preset and a sample of
the grid (`rnn`, `picker_rnn`, `cnn_blocks`, `rnn_blocks`, GRU flavour `gru_impl`):
- "train": the model as training builds it (`ModelOptions()`: the GRU / separable / conv
  backends "auto" picks, "fused" decoders for separable decoders, else "stacked"): outputs AND
  every parameter's gradient; each decoder form also explicitly (`DECODER_CASES`);
- "eager": `compile_for_inference(model, "eager")` against the reference in eval mode;
- "onnx": the exported file run by onnxruntime, against the reference in eval mode.
The decoder heads are scaled so that logits reach |10| (at random initialisation they are
≈0.03 and an absolute tolerance says nothing); the criterion is the relative error
max|a − b| / max|b| ≤ 1e-4, per output and per parameter gradient.

CI budget: batch 1 (2 for the training path, where BatchNorm needs a batch), dropout 0 (the
training path is deterministic), ONNX only for the cases marked so (an export costs seconds).
"""

from __future__ import annotations

import copy
import zlib

import numpy as np
import pytest
import torch

from feq_lab.export.onnx import export_onnx, onnx_session, run_onnx
from feq_lab.models import ModelOptions, build_model, compile_for_inference
from feq_lab.models.gru import aten_gru_sequence, gru_sequence
from feq_lab.models.layers import additive_scores, dropout, same_conv, separable_stage
from feq_lab.models.options import fused_kernels

pytestmark = pytest.mark.usefixtures("torch_one_thread")

RTOL = 1e-4
VANISHING = 1e-6  # a gradient this small next to the largest one is float32 rounding alone
LOGIT_SCALE = 10.0

# (preset, knob overrides, export to ONNX too): every preset with its own knobs, then a sample
# of the grid that flips each knob at least once and each GRU flavour in every position
CASES = [
    ("eqt", {}, True),
    ("leq", {}, True),
    ("feq1", {}, True),
    ("feq2", {}, True),
    ("feq3", {}, True),
    ("feq3", {"gru_impl": "keras"}, False),  # its export unrolls the loop: ~20 s
    ("eqt", {"rnn": "gru", "picker_rnn": "gru", "rnn_blocks": 1, "cnn_blocks": 2}, False),
    ("leq", {"rnn": "bigru", "gru_impl": "keras", "cnn_blocks": 2}, False),
    ("feq1", {"gru_impl": "keras", "picker_rnn": "lstm", "rnn_blocks": 1}, False),
    ("feq2", {"rnn": "lstm", "picker_rnn": "lstm", "cnn_blocks": 3}, False),
    ("feq3", {"rnn": "gru", "rnn_blocks": 2}, False),
    ("feq3", {"rnn": "bigru", "gru_impl": "keras", "cnn_blocks": 1}, False),
    ("feq3", {"rnn": "gru", "cnn_blocks": 2}, True),  # the monitor's champion configuration
    ("eqt", {"rnn": "gru", "picker_rnn": "gru", "cnn_blocks": 3}, True),
]


def _case_id(case) -> str:
    preset, overrides, _ = case
    return "-".join([preset, *(f"{k}={v}" for k, v in overrides.items())])


def _waveforms(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(
        np.random.default_rng(seed).standard_normal((batch, 3, 6000)).astype(np.float32)
    )


def _reference(preset: str, overrides: dict) -> torch.nn.Module:
    """The reference model with BN statistics and head scales that make the check sharp."""
    torch.manual_seed(zlib.crc32(repr((preset, sorted(overrides.items()))).encode()))
    model = build_model(preset, options=ModelOptions.reference(), dropout=0.0, **overrides)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_(0.0, 0.3)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    with torch.no_grad():
        logits = model.forward_logits(_waveforms(1))
        for decoder, logit in zip(model.decoders, logits):  # logits are affine in the head
            centre = float(logit.mean())
            factor = LOGIT_SCALE / float((logit - centre).abs().max())
            decoder.head.conv.weight.mul_(factor)
            decoder.head.conv.bias.sub_(centre).mul_(factor)  # (logit − centre)·factor
    return model


def _rel(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _assert_outputs(got, expected) -> None:
    for name, a, b in zip(("detection", "p", "s"), got, expected):
        assert float(torch.as_tensor(b).abs().max()) > 1.0, "the check needs O(10) logits"
        assert _rel(a, b) <= RTOL, f"{name}: relative error {_rel(a, b):.2e}"


@pytest.fixture(scope="module")
def references():
    return {}


def _cached_reference(references, case):
    key = _case_id(case)
    if key not in references:
        references[key] = _reference(case[0], case[1])
    return references[key]


# each decoder form with the backends the options can pair it with, beyond what "auto" picks:
# "fused" on dense decoders (EQT: stages through the conv seam) and with torch's ops throughout;
# "stacked" in both layouts: channel-first, and time-major (NHWC) with dense, folded separable
# (reference backend) and fused separable stages (layout copies around the C kernel); EQT's
# plain encoder in both layouts (NHWC is what "auto" picks, so the CASES above cover it)
DECODER_CASES = [
    (("eqt", {}, False), ModelOptions(decoders="fused")),
    (("eqt", {}, False), ModelOptions(
        decoders="stacked", decoder_layout="channels_first", encoder_layout="channels_first"
    )),
    (("feq3", {}, False), ModelOptions(decoders="stacked")),
    (("leq", {}, False), ModelOptions(
        decoders="stacked", decoder_layout="channels_last", separable_backend="reference"
    )),
    (("leq", {}, False), ModelOptions(
        decoders="fused", separable_backend="reference", conv_backend="reference"
    )),
]  # fmt: skip


@pytest.mark.parametrize(
    "case, options",
    [(case, None) for case in CASES] + DECODER_CASES,
    ids=[_case_id(c) for c in CASES]
    + [f"{_case_id(c)}-{o.decoders}-{o.decoder_layout}-{o.encoder_layout}" for c, o in DECODER_CASES],
)
def test_training_path_outputs_and_gradients(case, options, references):
    """Outputs in train mode; gradients with BatchNorm on its running statistics. Why: at batch
    2, training-mode BatchNorm (batch statistics over near-dead channels) amplifies a 1e-7
    change of the encoder's output ~400× by the transformer's input, so two float32
    implementations that merely round differently would disagree on some gradients by 1e-2;
    the implementations under test (GRU, separable stages, stacked decoders) do not depend on
    the mode. Gradients are compared with the reference run in float64 (the truth to ~1e-12);
    where float32 itself cannot reach 1e-4 (sums that cancel), a gradient must be no further
    from the truth than twice the float32 reference's own error.
    A ReLU input within float32 rounding of 0 can take the other side of the kink in one float32
    implementation (one such element moved a decoder weight's gradient by 4e-3 on a Sapphire
    Rapids CPU): a gradient check that fails is repeated once on other input waveforms, where a
    real difference fails again and a kink almost surely does not recur."""
    reference = _cached_reference(references, case)
    model = build_model(reference.spec, options=options)  # None: what training builds
    model.load_state_dict(reference.state_dict())
    x = _waveforms(2, seed=1)
    with torch.no_grad():  # train-mode outputs (copies: the reference's BN statistics stay)
        ref_out = copy.deepcopy(reference).train().forward_logits(x)
        out = copy.deepcopy(model).train().forward_logits(x)
    _assert_outputs(out, ref_out)
    failures = _gradient_failures(reference, model, seed=1)
    if failures:
        failures = _gradient_failures(reference, model, seed=2)
    assert not failures, failures


def _gradient_failures(reference, model, seed: int) -> list[str]:
    """Parameters whose gradient misses the criterion of the test above, on waveforms `seed`."""
    x = _waveforms(2, seed=seed)
    rng = np.random.default_rng(seed)
    weights = [
        torch.from_numpy(rng.standard_normal((2, 6000)).astype(np.float32)) for _ in range(3)
    ]

    def grads(m, dtype=torch.float32):
        m = copy.deepcopy(m).to(dtype).eval()
        out = m.forward_logits(x.to(dtype))
        # a loss whose gradient is dense and sign-varying on every output sample
        sum((w.to(dtype) * torch.tanh(o / 4.0)).mean() for w, o in zip(weights, out)).backward()
        return {n: p.grad.double() for n, p in m.named_parameters()}

    ref_grads, got, true_grads = grads(reference), grads(model), grads(reference, torch.float64)
    largest = max(float(g.abs().max()) for g in true_grads.values())
    failures = []
    for name, truth in true_grads.items():
        if float(truth.abs().max()) < VANISHING * largest:
            # a gradient that vanishes identically (the attention score bias b_a, which shifts
            # every score alike): float32 leaves rounding noise alone
            if float(got[name].abs().max()) >= VANISHING * largest:
                failures.append(f"d/d {name}: should vanish, max {float(got[name].abs().max())}")
            continue
        err, ref_err = _rel(got[name], truth), _rel(ref_grads[name], truth)
        if err > max(RTOL, 2.0 * ref_err):
            failures.append(f"d/d {name}: relative error {err:.2e} (float32 ref: {ref_err:.2e})")
    return failures


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_compiled_eager_inference(case, batch, references):
    reference = _cached_reference(references, case)
    x = _waveforms(batch, seed=2)
    with torch.no_grad():
        expected = reference.forward_logits(x)
    _assert_outputs(compile_for_inference(reference, target="eager").forward_logits(x), expected)


@pytest.mark.parametrize("case", [c for c in CASES if c[2]], ids=_case_id)
def test_onnx_export(case, references, tmp_path):
    """The file `export_onnx` writes holds probabilities in float32, which cannot resolve a
    logit beyond |logit| ≈ 7 (1 − p below 1e-3 is a few float32 steps from 1): logits are
    compared where the reference probability is within [1e-3, 1 − 1e-3], relative to the
    largest reference logit; all samples as probabilities too (absolute 1e-5)."""
    reference = _cached_reference(references, case)
    x = _waveforms(2, seed=3)
    with torch.no_grad():
        expected = [t.double() for t in reference.forward_logits(x)]
    session = onnx_session(export_onnx(reference, tmp_path / "model.onnx"))
    for name, got, logit in zip(("detection", "p", "s"), run_onnx(session, x.numpy()), expected):
        prob = torch.from_numpy(got).double()
        resolvable = (torch.sigmoid(logit) - 0.5).abs() <= 0.5 - 1e-3
        err = (torch.logit(prob) - logit)[resolvable].abs().max() / logit.abs().max()
        assert float(logit.abs().max()) > 1.0 and resolvable.float().mean() > 0.3, name
        assert float(err) <= RTOL, f"{name}: relative error {float(err):.2e}"
        assert float((prob - torch.sigmoid(logit)).abs().max()) <= 1e-5, name


GRU_BACKENDS = {"aten": aten_gru_sequence}
if getattr(fused_kernels, "gru_sequence", None) is not None:
    GRU_BACKENDS["fused"] = fused_kernels.gru_sequence


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("flavour", ["torch", "keras"])
@pytest.mark.parametrize("backend", sorted(GRU_BACKENDS))
def test_gru_backends_equal_the_reference(backend, flavour, reverse):
    """Each GRU implementation the options can choose (the seam `gru.GruFn`): outputs and the
    gradients of input and weights equal `gru.gru_sequence`'s, saturating gates included."""
    torch.manual_seed(5)
    units, inputs = 16, 12
    tensors = [
        3.0 * torch.randn(3, 40, inputs),
        0.5 * torch.randn(3 * units, inputs),
        0.5 * torch.randn(3 * units, units),
        0.5 * torch.randn(3 * units),
    ]
    tensors.append(None if flavour == "keras" else 0.5 * torch.randn(3 * units))
    target = torch.randn(3, 40, units)

    def run(fn):
        leaves = [t.clone().requires_grad_(True) if t is not None else None for t in tensors]
        y = fn(*leaves, reverse=reverse, flavour=flavour)
        (y * target).sum().backward()
        return y.detach(), [t.grad for t in leaves if t is not None]

    y_ref, g_ref = run(gru_sequence)
    y, g = run(GRU_BACKENDS[backend])
    assert _rel(y, y_ref) <= RTOL
    for a, b in zip(g, g_ref):
        assert _rel(a, b) <= RTOL


SEPARABLE_BACKENDS = {}
SCORES_BACKENDS = {}
CONV_BACKENDS = {}
if getattr(fused_kernels, "same_conv", None) is not None:
    CONV_BACKENDS["fused"] = fused_kernels.same_conv
if getattr(fused_kernels, "separable_stage", None) is not None:
    SEPARABLE_BACKENDS["fused"] = fused_kernels.separable_stage
if getattr(fused_kernels, "additive_scores", None) is not None:
    SCORES_BACKENDS["fused"] = fused_kernels.additive_scores


def _grads_equal(fn, reference, tensors, **kwargs) -> None:
    def run(f):
        leaves = [t.clone().requires_grad_(True) for t in tensors]
        y = f(*leaves, **kwargs)
        (y * torch.linspace(-1.0, 1.0, y.numel()).reshape(y.shape)).sum().backward()
        return [y.detach()] + [t.grad for t in leaves]

    for a, b in zip(run(fn), run(reference)):
        assert _rel(a, b) <= RTOL


@pytest.mark.parametrize("backend", sorted(SEPARABLE_BACKENDS) or ["none"])
def test_separable_backends_equal_the_reference(backend):
    """Each separable-stage implementation the options can choose (`layers.SeparableFn`), on an
    encoder stage (pool) and a stacked decoder stage (groups 3, upsample, crop)."""
    if backend == "none":
        pytest.skip("no fused separable stage in this checkout")
    torch.manual_seed(6)
    fn = SEPARABLE_BACKENDS[backend]
    tensors = [torch.randn(2, 8, 600), torch.randn(8, 1, 7), torch.randn(16, 8, 1), torch.randn(16)]
    _grads_equal(fn, separable_stage, tensors, pool=3)
    tensors = [
        torch.randn(2, 48, 56),
        torch.randn(48, 1, 5),
        torch.randn(24, 16, 1),
        torch.randn(24),
    ]
    _grads_equal(fn, separable_stage, tensors, groups=3, upsample=3, crop=(1, 1))


@pytest.mark.parametrize("backend", sorted(SCORES_BACKENDS) or ["none"])
def test_attention_score_backends_equal_the_reference(backend):
    """Each global-attention score implementation the options can choose (`layers.ScoresFn`)."""
    if backend == "none":
        pytest.skip("no fused attention scores in this checkout")
    torch.manual_seed(7)
    tensors = [torch.randn(2, 56, 32), torch.randn(2, 56, 32), torch.randn(32)]
    _grads_equal(SCORES_BACKENDS[backend], additive_scores, tensors)


@pytest.mark.parametrize("backend", sorted(CONV_BACKENDS) or ["none"])
def test_conv_backends_equal_the_reference(backend):
    """Each dense-conv implementation the options can choose (`layers.ConvFn`), on the fused
    decoders' grouped heads (groups 3, 8 → 1, "same" padding) and an explicit padding."""
    if backend == "none":
        pytest.skip("no fused conv in this checkout")
    torch.manual_seed(8)
    fn = CONV_BACKENDS[backend]
    tensors = [torch.randn(2, 24, 300), torch.randn(3, 8, 11), torch.randn(3)]
    _grads_equal(fn, same_conv, tensors, groups=3)
    tensors = [torch.randn(2, 6, 100), torch.randn(6, 3, 4), torch.randn(6)]
    _grads_equal(fn, same_conv, tensors, groups=2, padding=(2, 1))


DROPOUT_BACKENDS = {"reference": dropout}
if getattr(fused_kernels, "dropout", None) is not None:
    DROPOUT_BACKENDS["fused"] = fused_kernels.dropout


@pytest.mark.parametrize("backend", sorted(DROPOUT_BACKENDS))
def test_dropout_backends_draw_the_reference_distribution(backend):
    """Each elementwise dropout the options can choose (`layers.DropoutFn`): the identity in eval
    and at p = 0; in training each element kept with probability 1 − p (within 5 binomial σ over
    a million draws) at F.dropout's scale, its gradient through the same mask; a seeded torch
    generator repeats the draws; p = 1 drops everything."""
    fn = DROPOUT_BACKENDS[backend]
    x = torch.randn(8, 125, 1000, requires_grad=True)
    assert fn(x, 0.1, False) is x and fn(x, 0.0, True) is x
    torch.manual_seed(11)
    y = fn(x, 0.1, True)
    kept = y != 0
    n = kept.numel()
    assert abs(int(kept.sum()) - 0.9 * n) <= 5 * (0.9 * 0.1 * n) ** 0.5
    scale = torch.nn.functional.dropout(torch.ones(1), 0.1, True).max()  # 1/(1 − p) in float32
    assert torch.equal(y[kept], (x * scale)[kept])
    grad = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, grad)
    assert torch.equal(gx, torch.where(kept, grad * scale, torch.zeros(())))
    torch.manual_seed(11)
    assert torch.equal(fn(x, 0.1, True), y)
    assert not torch.equal(fn(x, 0.1, True), y)  # a new draw per call
    assert not fn(x, 1.0, True).any()


def test_model_dropouts_draw_through_the_seam():
    """Every elementwise dropout of a model (recurrent blocks, transformers' feed-forward,
    pickers) runs the chosen `DropoutFn`, in training only."""
    calls = []

    def spy(x, p, training):
        calls.append((tuple(x.shape), p, training))
        return dropout(x, p, training)

    model = build_model("feq3", options=ModelOptions(dropout_backend=spy), dropout=0.1)
    model.train().forward_logits(_waveforms(2))
    spec = model.spec
    assert len(calls) == spec.rnn_blocks + spec.transformer_blocks + 2
    assert all(p == 0.1 and training for _, p, training in calls)
    assert (2, 56, spec.feedforward_units) in [shape for shape, _, _ in calls]


def test_auto_decoder_form_runs_heads_through_the_conv_seam():
    """Decoders "auto": separable decoders with a fused separable stage take the "fused" form,
    whose three heads are one grouped call of the chosen conv; dense decoders stay "stacked"."""
    calls = []

    def spy(x, weight, bias, **kwargs):
        calls.append((tuple(weight.shape), kwargs.get("groups", 1)))
        return same_conv(x, weight, bias, **kwargs)

    options = ModelOptions(separable_backend=lambda *a, **k: separable_stage(*a, **k),
                           conv_backend=spy)  # fmt: skip
    model = build_model("feq3", options=options, dropout=0.0)
    with torch.no_grad():
        model.eval().forward_logits(_waveforms(1))
    assert calls == [((3, model.spec.decoder_filters[-1], model.spec.head_kernel), 3)]
    assert options.decoder_form(separable_decoders=False) == "stacked"
    assert ModelOptions.reference().decoder_form(separable_decoders=True) == "per_decoder"


@pytest.mark.parametrize("length, pool", [(6000, 2), (375, 2), (7, 3), (8, 3), (5, 4), (9, 1)])
def test_same_max_pool_on_nhwc_signals_matches_the_1d_pool(length, pool):
    """The channels_last encoder's pool ((B, C, 1, T) in NHWC) is the 1-D TF "same" pool in
    every padding case (none, partial last window, symmetric, asymmetric −inf pad): same values
    and the same gradient (ties go to the same sample)."""
    from feq_lab.models.layers import same_max_pool1d

    base = torch.from_numpy(np.random.default_rng(length).standard_normal((2, 5, length)))
    base = base.float()
    x1 = base.clone().requires_grad_(True)
    x2 = base.clone().requires_grad_(True)
    y1 = same_max_pool1d(x1, pool)
    y2 = same_max_pool1d(x2.unsqueeze(2).contiguous(memory_format=torch.channels_last), pool)
    weights = torch.randn(y1.shape)
    (y1 * weights).sum().backward()
    (y2.squeeze(2) * weights).sum().backward()
    assert torch.equal(y1, y2.squeeze(2))
    assert torch.equal(x1.grad, x2.grad)
