"""The GRU recurrence, written once for both flavours the family uses (REFERENCE §5.1, §5.5).

Every GRU forward of the model goes through one function with this signature (`GruFn`), chosen
when the model is built (`ModelOptions.gru_backend`): `gru_sequence` below is the readable
pure-torch reference; a fused implementation (C forward and backward) is a drop-in replacement
with the same signature and the same outputs and gradients.

    gru_sequence(x (B, T, I), weight_ih (3u, I), weight_hh (3u, u), bias_ih (3u,) | None,
                 bias_hh (3u,) | None, *, reverse: bool, flavour: "torch" | "keras") -> (B, T, u)

- "torch": PyTorch's `nn.GRU` layout and equations, gates r, z, n,
  n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)).
- "keras": Keras 2.3.1's `reset_after=False` cell (what the FEQ report counted), gates z, r, n,
  one bias (passed as `bias_ih`, `bias_hh` None), the reset gate applied *before* the recurrent
  matmul: n = tanh(W_in x + b_n + W_hn (r ⊙ h)).
Both: h' = z ⊙ h + (1 − z) ⊙ n, h0 = 0; `reverse` runs from the last step to the first (the
backward half of a bidirectional layer), outputs stay in time order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

GruFn = Callable[..., torch.Tensor]
FLAVOURS = ("torch", "keras")


def gru_sequence(
    x: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None,
    bias_hh: torch.Tensor | None,
    *,
    reverse: bool,
    flavour: str,
) -> torch.Tensor:
    """The reference: input projections for all steps at once, then a Python loop over steps."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown GRU flavour {flavour!r}; expected torch or keras")
    u = weight_hh.shape[1]
    steps = x.shape[1]
    gates_x = F.linear(x, weight_ih, bias_ih)  # (B, T, 3u)
    h = x.new_zeros(x.shape[0], u)
    out: list[torch.Tensor] = [h] * steps
    for t in range(steps - 1, -1, -1) if reverse else range(steps):
        gx = gates_x[:, t]
        if flavour == "torch":  # gates r, z, n; reset applied to the recurrent product
            gh = F.linear(h, weight_hh, bias_hh)
            r = torch.sigmoid(gx[:, :u] + gh[:, :u])
            z = torch.sigmoid(gx[:, u : 2 * u] + gh[:, u : 2 * u])
            n = torch.tanh(gx[:, 2 * u :] + r * gh[:, 2 * u :])
        else:  # keras reset_after=False: gates z, r, n; reset applied to h before the matmul
            zr = torch.sigmoid(gx[:, : 2 * u] + h @ weight_hh[: 2 * u].t())
            z, r = zr[:, :u], zr[:, u:]
            n = torch.tanh(gx[:, 2 * u :] + (r * h) @ weight_hh[2 * u :].t())
        h = z * h + (1 - z) * n
        out[t] = h
    return torch.stack(out, dim=1)


def aten_gru_sequence(
    x: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None,
    bias_hh: torch.Tensor | None,
    *,
    reverse: bool,
    flavour: str,
) -> torch.Tensor:
    """The same function through PyTorch's own GRU op (`torch.gru`, what `nn.GRU` runs: the
    step loop in C++, ~1.7× faster than `gru_sequence` forward + backward at the pickers'
    shapes) for the "torch" flavour; the Keras cell has no PyTorch op and takes the reference."""
    if flavour != "torch" or bias_ih is None or bias_hh is None:
        return gru_sequence(
            x, weight_ih, weight_hh, bias_ih, bias_hh, reverse=reverse, flavour=flavour
        )
    h0 = x.new_zeros(1, x.shape[0], weight_hh.shape[1])
    params = [weight_ih, weight_hh, bias_ih, bias_hh]
    # (input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
    xs = x.flip(1) if reverse else x
    y = torch.gru(xs, h0, params, True, 1, 0.0, torch.is_grad_enabled(), False, True)[0]
    return y.flip(1) if reverse else y
