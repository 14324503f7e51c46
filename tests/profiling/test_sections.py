"""The per-section eager profile covers every section of the eval forward pass."""

from __future__ import annotations

import torch

from feq_lab.models import build_model
from feq_lab.profiling.sections import SECTIONS, section_calls, time_sections


def test_every_section_is_timed_and_decoders_return_the_model_logits():
    torch.manual_seed(0)
    model = build_model("feq3")
    per = time_sections({"feq3": model}, passes=1, block=1)["feq3"]
    assert set(per) == set(SECTIONS)
    assert all(ms > 0 for ms in per.values())
    x = torch.randn(1, 3, 6000)
    with torch.inference_mode():
        det, p, s = section_calls(model, x)["decoders"]()
        ref = model.forward_logits(x)
    torch.testing.assert_close(torch.stack([det, p, s]), torch.stack(ref))
