"""The 1-D → 2-D layout rewrite of exported graphs: same outputs, 2-D convs, no squeeze pairs."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from feq_lab.export.layout import lift_to_2d
from feq_lab.export.onnx import export_onnx
from feq_lab.models import build_model


class _Chain(nn.Module):
    """conv → BN → ReLU → pool → depthwise + pointwise → residual add → crop → 1-D conv head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 7, padding=3)
        self.norm = nn.BatchNorm1d(8)
        self.depthwise = nn.Conv1d(8, 8, 5, padding=2, groups=8, bias=False)
        self.pointwise = nn.Conv1d(8, 8, 1)
        self.head = nn.Conv1d(8, 1, 3, padding=1)

    def forward(self, x):
        y = F.max_pool1d(F.relu(self.norm(self.conv(x))), 2)
        y = y + F.relu(self.pointwise(self.depthwise(y)))
        return torch.sigmoid(self.head(y[:, :, 1:]))


def _export(module: nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(
        module.eval(),
        (x,),
        buffer,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return onnx.load_from_string(buffer.getvalue())


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _conv_ranks(model: onnx.ModelProto) -> set[int]:
    ranks = set()
    for node in model.graph.node:
        if node.op_type in ("Conv", "MaxPool"):
            kernel = [a for a in node.attribute if a.name == "kernel_shape"]
            ranks.add(len(kernel[0].ints) if kernel else -1)
    return ranks


def test_lift_keeps_outputs_and_leaves_no_squeeze_between_convs():
    torch.manual_seed(0)
    module = _Chain()
    with torch.no_grad():
        module.norm.running_mean.uniform_(-0.5, 0.5)
        module.norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 400)
    plain = _export(module, x)
    assert _conv_ranks(plain) == {1}
    lifted = lift_to_2d(_export(module, x))
    onnx.checker.check_model(lifted)
    assert _conv_ranks(lifted) == {2}
    # one Unsqueeze of the data at the input, one Squeeze before the 3-D output, none between
    weights = {i.name for i in lifted.graph.initializer}
    data_unsqueezes = [
        n for n in lifted.graph.node if n.op_type == "Unsqueeze" and n.input[0] not in weights
    ]
    assert len(data_unsqueezes) == 1
    assert sum(n.op_type == "Squeeze" for n in lifted.graph.node) == 1
    assert _squeeze_unsqueeze_pairs(lifted) == 0
    x3 = np.random.default_rng(1).standard_normal((3, 3, 400)).astype(np.float32)
    np.testing.assert_allclose(_run(lifted, x3), _run(plain, x3), atol=1e-6, rtol=0)
    with torch.no_grad():
        np.testing.assert_allclose(_run(lifted, x3), module(torch.from_numpy(x3)).numpy(), atol=1e-5)


def test_lift_leaves_a_graph_without_1d_convs_alone():
    model = _export(nn.Sequential(nn.Linear(8, 4), nn.ReLU()), torch.randn(2, 8))
    before = [n.op_type for n in model.graph.node]
    x = np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)
    reference = _run(model, x)
    lifted = lift_to_2d(model)
    assert [n.op_type for n in lifted.graph.node] == before
    np.testing.assert_array_equal(_run(lifted, x), reference)


@pytest.mark.parametrize("preset", ["feq3", "eqt"])
def test_exported_presets_have_only_2d_convs(tmp_path, preset):
    torch.manual_seed(3)
    path = export_onnx(build_model(preset).eval(), tmp_path / "m.onnx")
    model = onnx.load(str(path))
    assert _conv_ranks(model) == {2}
    assert _squeeze_unsqueeze_pairs(model) == 0
    # RNNs start from ONNX's default zero state instead of zeros built from the batch's shape
    rnns = [n for n in model.graph.node if n.op_type in ("LSTM", "GRU")]
    assert rnns and all(len(n.input) <= 5 or not any(n.input[5:]) for n in rnns)


def _squeeze_unsqueeze_pairs(model: onnx.ModelProto) -> int:
    """Unsqueeze nodes fed straight by a Squeeze (what the rewrite cancels)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    return sum(
        n.op_type == "Unsqueeze" and getattr(producers.get(n.input[0]), "op_type", "") == "Squeeze"
        for n in model.graph.node
    )


NCHWC_BLOCK = 16  # onnxruntime's NCHWc block with AVX-512 (8 with AVX2 divides it)


def _nchwc_misfits(model: onnx.ModelProto) -> list[str]:
    """Conv / MaxPool nodes whose channel counts the NCHWc transformer may refuse (the rule of
    onnxruntime/core/optimizer/nchwc_transformer.cc, `TransformConv` / `TransformPool`): a
    grouped conv needs its outputs, and its inputs and outputs per group, in whole blocks (or is
    depthwise on whole blocks); a dense conv needs its inputs in whole blocks or fewer than one
    block; a pool needs its channels in whole blocks. A conv reading the waveform itself is
    exempt (its 3 channels: the export runs LEQ/FEQ's first depthwise conv plainly, by choice)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*inferred.graph.value_info, *inferred.graph.input]
    }
    shapes.update({i.name: list(i.dims) for i in model.graph.initializer})
    inputs = {i.name for i in model.graph.input}
    lifted_inputs = {n.output[0] for n in model.graph.node if n.input and n.input[0] in inputs}
    bad = []
    for node in model.graph.node:
        if node.input and node.input[0] in inputs | lifted_inputs:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            c_out, c_in = shapes[node.input[1]][:2]
            group = attrs.get("group", 1)
            if group > 1:
                depthwise = c_in == 1 and c_out == group
                whole = c_in % NCHWC_BLOCK == 0 and (c_out // group) % NCHWC_BLOCK == 0
                ok = c_out % NCHWC_BLOCK == 0 and (depthwise or whole)
            else:
                ok = c_in < NCHWC_BLOCK or c_in % NCHWC_BLOCK == 0
        elif node.op_type == "MaxPool":
            ok = shapes[node.input[0]][1] % NCHWC_BLOCK == 0
        else:
            continue
        if not ok:
            bad.append(f"{node.op_type} {node.name}")
    return bad


@pytest.mark.parametrize("preset", ["feq3", "leq"])
def test_exported_separable_presets_fit_the_nchwc_kernels(tmp_path, preset):
    """Every conv and pool of the LEQ/FEQ exports can run in onnxruntime's blocked layout (the
    padded encoder stage and decoder tail, models/compile.py and models/fastdecode.py): none
    falls back to im2col or forces a reorder pair."""
    torch.manual_seed(4)
    model = onnx.load(str(export_onnx(build_model(preset).eval(), tmp_path / "m.onnx")))
    assert [n for n in model.graph.node if n.op_type == "MaxPool"]  # the check sees the pools
    assert _nchwc_misfits(model) == []
