"""The polyphase rewrites equal nearest upsampling followed by a "same" convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from feq_lab.models import InferenceOptions, ModelOptions, build_model, compile_for_inference
from feq_lab.models.fastdecode import (
    _Conv,
    _sum_shifted,
    _tap_products,
    build_stacked,
    polyphase_head,
    polyphase_weight,
)
from feq_lab.models.layers import SameConv1d, upsample_nearest


def _interleave(y: torch.Tensor, phases: int, channels: int) -> torch.Tensor:
    """(B, phases·channels, T) ordered (phase, channel) → (B, channels, phases·T)."""
    batch, _, length = y.shape
    return y.reshape(batch, phases, channels, length).permute(0, 2, 3, 1).reshape(
        batch, channels, phases * length
    )


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5, 7, 11])
@pytest.mark.parametrize("factor", [1, 2, 3, 4])
def test_polyphase_stage_equals_upsample_then_conv(kernel, factor):
    torch.manual_seed(kernel * 10 + factor)
    conv = SameConv1d(3, 4, kernel).eval()
    x = torch.randn(2, 3, 9)
    with torch.no_grad():
        expected = conv(upsample_nearest(x, factor))
        weight, (left, right) = polyphase_weight(conv.conv.weight, factor)
        y = F.conv1d(F.pad(x, (left, right)), weight, conv.conv.bias.repeat(factor))
    torch.testing.assert_close(_interleave(y, factor, 4), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", [1, 2, 5, 11])
@pytest.mark.parametrize("phases", [1, 2, 3])
def test_polyphase_head_equals_conv_on_the_interleaved_signal(kernel, phases):
    torch.manual_seed(kernel + 100 * phases)
    head = SameConv1d(4, 1, kernel).eval()
    z = torch.randn(2, phases * 4, 7)  # 4 channels held as `phases` phases of length 7
    with torch.no_grad():
        expected = head(_interleave(z, phases, 4))
        weight, (left, right) = polyphase_head(head.conv.weight, phases)
        y = F.conv1d(F.pad(z, (left, right)), weight, head.conv.bias.repeat(phases))
    torch.testing.assert_close(_interleave(y, phases, 1), expected, atol=1e-5, rtol=1e-5)


def _decoders(preset: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(preset, options=ModelOptions.reference(), dropout=0.0).eval()
    with torch.no_grad():  # BN-free decoders; make the heads' logits O(10) so errors show
        for decoder in model.decoders:
            decoder.head.conv.weight.mul_(30.0)
    return model, list(model.decoders)


@pytest.mark.parametrize("block", [1, 8, 16])
@pytest.mark.parametrize("preset", ["feq3", "eqt"])
def test_onnx_form_equals_the_decoders(preset, block):
    """The "onnx" form (FEQ: the separable polyphase tail, phases sharing padded blocks when
    the block allows; EQT: a dense polyphase tail) computes the decoders' logits in PyTorch."""
    model, decoders = _decoders(preset)
    length = model.spec.encoder_lengths[-1]
    channels = decoders[0].layers[decoders[0].layer_of_stage[0]].conv.weight.shape[1]
    x = torch.randn(2, 3 * channels, length)
    with torch.no_grad():
        expected = [d(x[:, i * channels : (i + 1) * channels]) for i, d in enumerate(decoders)]
        stacked = build_stacked(decoders, "onnx", nchwc_block=block)
        got = stacked(x)
    assert (stacked.phase_tail is not None) == (preset == "feq3")
    scale = max(float(e.abs().max()) for e in expected)
    assert scale > 1.0
    for g, e in zip(got, expected):
        assert float((g - e).abs().max()) / scale <= 1e-5


@pytest.mark.parametrize("pad", [(2, 2), (1, 2), (3, 1), (0, 0)])
@pytest.mark.parametrize("block", [1, 16])
def test_tap_products_and_shifted_sum_equal_a_grouped_conv(pad, block):
    torch.manual_seed(sum(pad) + block)
    k = pad[0] + pad[1] + 1
    weight, bias = torch.randn(9, 4, k), torch.randn(9)
    x = torch.randn(2, 12, 30)
    expected = F.conv1d(F.pad(x, pad), weight, bias, groups=3)
    got = _sum_shifted(_Conv(weight, bias, pad), _tap_products(weight, x, pad, block))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block", [8, 16])
@pytest.mark.parametrize("preset", ["feq3", "leq", "eqt"])
def test_onnx_target_computes_the_model_for_either_block(preset, block):
    """The "onnx" inference form, run in PyTorch, for the AVX2 and AVX-512 NCHWc blocks (padded
    encoder stages and decoder tail): the model's logits."""
    model, _ = _decoders(preset, seed=1)
    x = torch.randn(2, 3, 6000)
    options = InferenceOptions(nchwc_block=block)
    with torch.no_grad():
        expected = model.forward_logits(x)
        got = compile_for_inference(model, target="onnx", options=options).forward_logits(x)
    scale = max(float(e.abs().max()) for e in expected)
    assert scale > 1.0
    for g, e in zip(got, expected):
        assert float((g - e).abs().max()) / scale <= 1e-4
