"""The builder: shapes, ranges, gradients, determinism, MC dropout, validation, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from feq_lab.errors import ConfigError, DataError
from feq_lab.models import (
    PRESETS,
    InferenceOptions,
    ModelOptions,
    ModelSpec,
    build_model,
    compile_for_inference,
    load_checkpoint,
    mc_predict,
    save_checkpoint,
    spec_from_config,
)
from feq_lab.models.layers import KerasGRU, SameConv1d, SameMaxPool1d
from feq_lab.paths import CONF_DIR

DATA = Path(__file__).parent / "data"

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _waveforms(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(
        np.random.default_rng(seed).standard_normal((batch, 3, 6000)).astype(np.float32)
    )


@pytest.mark.parametrize("preset", PRESETS)
def test_outputs_are_probability_traces(preset):
    torch.manual_seed(0)
    model = build_model(preset).eval()
    x = _waveforms()
    with torch.no_grad():
        probs = model(x)
        logits = model.forward_logits(x)
    assert len(probs) == 3
    for prob, logit in zip(probs, logits):
        assert prob.shape == (2, 6000) and logit.shape == (2, 6000)
        assert float(prob.min()) >= 0.0 and float(prob.max()) <= 1.0
        torch.testing.assert_close(prob, torch.sigmoid(logit))
    with torch.no_grad():
        again = model(x)
    for a, b in zip(probs, again):  # eval mode is deterministic (spatial dropout off)
        assert torch.equal(a, b)


def test_wrong_input_shape_is_rejected():
    model = build_model("feq3").eval()
    with pytest.raises(ValueError, match="6000"):
        model(torch.zeros(1, 3, 5000))


@pytest.mark.parametrize(
    "preset, overrides",
    [
        ("eqt", {}),
        ("leq", {}),
        ("feq1", {"gru_impl": "keras", "rnn_blocks": 1}),
        ("feq3", {"rnn": "lstm"}),
    ],
)
def test_gradients_reach_every_parameter(preset, overrides):
    torch.manual_seed(1)
    model = build_model(preset, **overrides).train()
    det, p, s = model.forward_logits(_waveforms())
    (det.square().mean() + p.square().mean() + s.square().mean()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        # b_a (score bias) shifts every attention score equally: its gradient is exactly zero
        if not name.endswith("score.bias"):
            assert param.grad.abs().sum() > 0, name


def test_mc_dropout_varies_and_restores_eval_mode():
    torch.manual_seed(2)
    model = build_model("feq3").eval()
    x = _waveforms(1)
    with torch.no_grad():
        before = model(x)
    mean, std = mc_predict(model, x, n=4)
    assert len(mean) == len(std) == 3
    assert all(m.shape == (1, 6000) for m in mean)
    assert any(float(s.max()) > 0 for s in std)  # passes differ
    assert all(float(m.min()) >= 0 and float(m.max()) <= 1 for m in mean)
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        after = model(x)
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_build_from_composed_config_mapping_and_none_overrides():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model=feq3"])  # FEQ3 = LEQ + its defaults-list delta
    model = build_model(cfg.model, rnn=None, picker_rnn=None, cnn_blocks=None, rnn_blocks=None)
    assert model.spec == build_model("feq3").spec
    model = build_model(cfg.model, rnn="gru", cnn_blocks=3)
    assert (model.spec.rnn, model.spec.residual_kernels, model.spec.name) == (
        "gru",
        (3, 3, 3),
        "feq3",
    )
    assert not model.rnn_blocks[0].rnn.bidirectional
    spec = spec_from_config(cfg.model, rnn_blocks=3)
    assert isinstance(spec, ModelSpec) and spec.rnn_blocks == 3
    assert build_model(spec, dropout=0.2).spec.dropout == 0.2


def test_cnn_blocks_cycle_the_kernel_pattern():
    assert build_model("eqt", cnn_blocks=9).spec.residual_kernels == (3, 3, 3, 3, 2, 3, 2, 3, 3)
    assert build_model("feq2", cnn_blocks=5).spec.residual_kernels == (3, 3, 3, 2, 3)
    assert len(build_model("leq", cnn_blocks=1).bottleneck) == 1


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"cnn_blocks": 0}, "cnn_blocks"),
        ({"rnn_blocks": -1}, "rnn_blocks"),
        ({"cnn_blocks": 2.5}, "cnn_blocks"),
        ({"rnn": "transformer"}, "rnn"),
        ({"picker_rnn": "bilstm"}, "picker_rnn"),
        ({"gru_impl": "tf"}, "gru_impl"),
        ({"dropout": 1.5}, "dropout"),
        ({"rnn_type": "gru"}, "rnn_type"),
    ],
)
def test_invalid_knobs_raise_config_error_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        build_model("feq3", **overrides)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}:")


def test_invalid_presets_name_the_key():
    with pytest.raises(ConfigError, match="unknown preset 'feq9'") as info:
        build_model("feq9")
    assert info.value.key == "model"
    bad = dict(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "leq.yaml")))
    with pytest.raises(ConfigError) as info:
        build_model({**bad, "decoder_crops": [[0, 0]] * 5})  # output would be 56·2·2·3·3·3 ≠ 6000
    assert info.value.key == "model.decoder_crops"
    with pytest.raises(ConfigError) as info:
        build_model({**bad, "encoder_shared": [[3, 1]]})  # stage 1 is 8→16, stage 3 is 16→16
    assert info.value.key == "model.encoder_shared"
    with pytest.raises(ConfigError) as info:
        build_model({**bad, "kernel": 3})
    assert info.value.key == "model.kernel"


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(3)
    model = build_model("feq3", rnn="bigru", cnn_blocks=3).eval()
    path = save_checkpoint(model, tmp_path / "ckpt" / "model.pt")
    assert path.is_file() and not [p for p in path.parent.iterdir() if p.name.startswith(".")]
    loaded = load_checkpoint(path)
    assert loaded.spec == model.spec and not loaded.training
    x = _waveforms(1)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            assert torch.equal(a, b)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="garbage.pt"):
        load_checkpoint(garbage)


def _keras_gru_reference(x, w_ih, w_hh, bias):
    """Keras reset_after=False GRU written out in NumPy (z, r, n gate order)."""
    u = w_hh.shape[1]
    h = np.zeros((x.shape[0], u))
    out = []
    for t in range(x.shape[1]):
        gx = x[:, t] @ w_ih.T + bias
        z = 1 / (1 + np.exp(-(gx[:, :u] + h @ w_hh[:u].T)))
        r = 1 / (1 + np.exp(-(gx[:, u : 2 * u] + h @ w_hh[u : 2 * u].T)))
        n = np.tanh(gx[:, 2 * u :] + (r * h) @ w_hh[2 * u :].T)
        h = z * h + (1 - z) * n
        out.append(h)
    return np.stack(out, axis=1)


def test_keras_gru_matches_reset_after_false_equations():
    torch.manual_seed(4)
    gru = KerasGRU(5, 4, bidirectional=True)
    with torch.no_grad():
        gru.bias_l0.uniform_(-0.5, 0.5)
        gru.bias_l0_reverse.uniform_(-0.5, 0.5)
    x = torch.randn(2, 7, 5)
    with torch.no_grad():
        out, _ = gru(x)
    fwd = _keras_gru_reference(
        x.double().numpy(),
        *(
            getattr(gru, n).detach().double().numpy()
            for n in ("weight_ih_l0", "weight_hh_l0", "bias_l0")
        ),
    )
    bwd = _keras_gru_reference(
        x.flip(1).double().numpy(),
        *(
            getattr(gru, n).detach().double().numpy()
            for n in ("weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_l0_reverse")
        ),
    )[:, ::-1]
    np.testing.assert_allclose(out.numpy(), np.concatenate([fwd, bwd], axis=-1), atol=1e-5)


@pytest.mark.parametrize(
    "length, pool", [(6000, 3), (2000, 3), (667, 3), (223, 2), (112, 2), (375, 2), (10, 4), (11, 5)]
)
def test_same_max_pool_matches_tensorflow_padding(length, pool):
    x = torch.randn(1, 2, length)
    out = SameMaxPool1d(pool, length)(x)
    n_out = math.ceil(length / pool)
    total = max((n_out - 1) * pool + pool - length, 0)
    padded = np.pad(
        x.numpy(), ((0, 0), (0, 0), (total // 2, total - total // 2)), constant_values=-np.inf
    )
    expected = padded.reshape(1, 2, n_out, pool).max(-1)
    np.testing.assert_array_equal(out.numpy(), expected)


def test_even_kernel_pads_on_the_right_like_tensorflow():
    conv = SameConv1d(1, 1, 2)
    with torch.no_grad():
        conv.conv.weight.copy_(torch.tensor([[[1.0, 10.0]]]))
        conv.conv.bias.zero_()
    out = conv(torch.tensor([[[1.0, 2.0, 3.0]]]))
    assert out.tolist() == [[[21.0, 32.0, 3.0]]]  # last window sees the zero pad on the right


def _with_bn_statistics(model):
    for module in model.modules():  # non-trivial BN statistics
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_(0.0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("kernels_on", [True, False])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("preset", ["eqt", "leq", "feq1", "feq3"])
def test_compiled_inference_computes_the_same_function(preset, batch, kernels_on):
    """compile_for_inference (folded separable convs and BN, the sigmoid-form global attention,
    the fused P/S RNN, the C kernels or their torch fallback, the stacked polyphase decoders;
    batch 1: tap-by-tap matmuls, batch 2: grouped convs) == the reference model in eval."""
    torch.manual_seed(7)
    model = _with_bn_statistics(build_model(preset, options=ModelOptions.reference()).eval())
    x = _waveforms(batch)
    with torch.no_grad():
        plain = model.forward_logits(x)
    frozen = compile_for_inference(model, options=InferenceOptions(kernels=kernels_on))
    fast = frozen.forward_logits(x)
    for a, b in zip(plain, fast):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not frozen.training and not frozen.train().training  # frozen: always eval semantics


def test_compiled_model_is_a_snapshot_of_the_weights():
    """No cache to invalidate: the compiled object keeps the weights it was built from; a model
    trained further is compiled again."""
    torch.manual_seed(8)
    model = build_model("feq3").eval()
    x = _waveforms(1)
    frozen = compile_for_inference(model)
    before = frozen(x)
    with torch.no_grad():
        for param in model.parameters():  # what an optimiser step or load_state_dict does
            param.mul_(1.1)
        expected = model(x)
    for a, b in zip(before, frozen(x)):
        assert torch.equal(a, b)
    after = compile_for_inference(model)(x)
    assert not torch.allclose(before[1], after[1])
    for a, b in zip(after, expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_model_built_under_inference_mode_runs():
    with torch.inference_mode():
        model = build_model("feq3").eval()
        det, p, s = model(_waveforms(1))
        det2, p2, _ = compile_for_inference(model)(_waveforms(1))
    assert det.shape == p.shape == s.shape == det2.shape == (1, 6000)
    torch.testing.assert_close(p, p2, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("preset", ["eqt", "feq3"])
def test_training_with_stacked_decoders_gives_the_same_outputs_and_gradients(preset):
    """ModelOptions(decoders="stacked") rebuilds the stacked, polyphase decoder weights from the
    decoders' own parameters every step: outputs and every parameter's gradient equal the
    per-decoder reference's."""
    torch.manual_seed(11)
    plain = build_model(preset, options=ModelOptions(decoders="per_decoder"), dropout=0.0).train()
    stacked = build_model(preset, options=ModelOptions(decoders="stacked"), dropout=0.0).train()
    stacked.load_state_dict(plain.state_dict())
    x = _waveforms(3)

    def run(model):
        out = model.forward_logits(x)
        (out[0].sin().mean() + out[1].cos().mean() + (out[2] ** 2).mean()).backward()
        return [o.detach() for o in out], [p.grad.clone() for p in model.parameters()]

    plain_out, plain_grads = run(plain)
    fast_out, fast_grads = run(stacked)
    for a, b in zip(plain_out, fast_out):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    scale = max(float(g.abs().max()) for g in plain_grads)
    for (name, _), a, b in zip(plain.named_parameters(), plain_grads, fast_grads):
        # sums over 18,000 samples in another order: float32 rounding of ~1e-4 relative
        torch.testing.assert_close(a, b, atol=1e-4 * scale, rtol=1e-3, msg=name)


def test_eval_model_gives_input_gradients_after_inference_mode():
    """The reference model has no eval caches: a forward under torch.inference_mode, then one
    with autograd on (a saliency map, d output / d input) works."""
    torch.manual_seed(12)
    model = build_model("feq3").eval()
    x = _waveforms(1)
    with torch.inference_mode():
        model(x)
    xi = x.clone().requires_grad_(True)
    model(xi)[1].sum().backward()
    assert xi.grad.abs().sum() > 0


def test_options_are_validated_and_not_in_checkpoints(tmp_path):
    with pytest.raises(ConfigError) as info:
        build_model("feq3", options=ModelOptions(gru_backend="cuda"))
    assert info.value.key == "options.gru_backend"
    model = build_model("feq3", options=ModelOptions.reference())
    path = save_checkpoint(model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"format", "target", "config", "state_dict"}  # no options
    assert payload["target"] == "feq_lab.models.picker.PickerModel.from_config"
    assert load_checkpoint(path).options == ModelOptions()


@pytest.mark.parametrize("name", ["feq3", "feq2_keras"])
def test_checkpoints_written_by_the_previous_model_code_load(name):
    """Files written by main's `save_checkpoint` before the models were restructured (commit
    a516d26; parameter names nn.GRU's / KerasGRU's): they load unchanged and give the outputs
    that code gave (eval logits, every 20th sample, stored beside them)."""
    model = load_checkpoint(DATA / f"main_{name}.pt")
    expected = np.load(DATA / f"main_{name}_logits.npy")
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((1, 3, 6000)).astype(np.float32))
    with torch.no_grad():
        got = torch.stack(model.forward_logits(x))[:, 0, ::20].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    got = torch.stack(compile_for_inference(model).forward_logits(x))[:, 0, ::20].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_every_gru_runs_the_function_the_options_chose():
    """The GRU seam: each GRU direction of the model (BiGRU blocks and both pickers, either
    flavour) calls the one function passed in `ModelOptions`, with its flavour."""
    from feq_lab.models.gru import gru_sequence

    for gru_impl in ("torch", "keras"):
        calls: list[tuple[str, bool]] = []

        def spy(*args, calls=calls, **kwargs):
            calls.append((kwargs["flavour"], kwargs["reverse"]))
            return gru_sequence(*args, **kwargs)

        model = build_model("feq1", options=ModelOptions(gru_backend=spy), gru_impl=gru_impl)
        model.forward_logits(_waveforms(1))
        # 2 BiGRU blocks (forward + reverse each), then the P and S GRUs
        expected = [(gru_impl, False), (gru_impl, True)] * 2 + [(gru_impl, False)] * 2
        assert calls == expected


@pytest.mark.parametrize("decoders, expected", [("per_decoder", 5 + 3 * 5), ("stacked", 5 + 4)])
def test_every_separable_stage_runs_the_function_the_options_chose(decoders, expected):
    """The separable-stage seam: encoder stages (with their pool) and decoder stages (with
    upsampling and crop; stacked: groups = 3, the polyphase last stage folded) call it."""
    from feq_lab.models.layers import separable_stage

    calls = []

    def spy(x, *weights, **kwargs):
        calls.append(kwargs.get("groups", 1))
        return separable_stage(x, *weights, **kwargs)

    model = build_model("feq3", options=ModelOptions(separable_backend=spy, decoders=decoders))
    reference = build_model("feq3", options=ModelOptions.reference())
    reference.load_state_dict(model.state_dict())
    x = _waveforms(1)
    with torch.no_grad():
        got, want = model.eval().forward_logits(x), reference.eval().forward_logits(x)
    assert len(calls) == expected
    assert calls.count(3) == (4 if decoders == "stacked" else 0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fused_backend_is_an_error_only_when_the_kernels_are_absent():
    from feq_lab.models.options import fused_kernels

    if getattr(fused_kernels, "gru_sequence", None) is None:
        with pytest.raises(ConfigError) as info:
            build_model("feq3", options=ModelOptions(gru_backend="fused"))
        assert info.value.key == "options.gru_backend"
    else:
        model = build_model("feq3", options=ModelOptions(gru_backend="fused"))
        assert model.pickers[0].rnn.gru_fn is fused_kernels.gru_sequence


def test_global_attentions_score_through_the_function_the_options_chose():
    from feq_lab.models.layers import additive_scores

    calls = []

    def spy(q, k, w):
        calls.append(q.shape)
        return additive_scores(q, k, w)

    build_model("feq3", options=ModelOptions(attention_backend=spy)).forward_logits(_waveforms(1))
    assert calls == [(1, 56, 32)] * 2  # the two transformer blocks; local attentions are banded


def test_auto_options_without_a_compiler_take_pytorch_ops(monkeypatch):
    """No C library (no system compiler): "auto" must pick PyTorch's fast ops (aten GRU, the
    folded separable stage), not the fused functions' step-by-step torch fallbacks."""
    from feq_lab.models import ModelOptions
    from feq_lab.models.gru import aten_gru_sequence
    from feq_lab.models.kernels import autograd as fused_kernels
    from feq_lab.models.layers import separable_stage

    monkeypatch.setattr(fused_kernels, "available", lambda: False)
    options = ModelOptions()
    assert options.gru_fn() is aten_gru_sequence
    assert options.separable_fn() is separable_stage
    assert options.decoder_form(separable_decoders=True) == "stacked"
    # asking for the fused functions explicitly still gets them (their torch fallback runs)
    assert ModelOptions(gru_backend="fused").gru_fn() is fused_kernels.gru_sequence
