"""The polyphase rewrites equal nearest upsampling followed by a "same" convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from feq_lab.models.fastdecode import polyphase_head, polyphase_weight
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
