"""CPU kernels for the networks' products: each gives what the plain torch layer gives (tested), faster.

- ``linear``: activation(x W^T + b) through oneDNN's fused fp32 linear kernel (``torch.ops.mkldnn.
  _linear_pointwise``, what torch.compile emits on CPU), with its own backward. On the benchmark's AMD EPYC,
  oneDNN reaches ~230 GFLOP/s on one core where torch.mm (MKL) reaches ~105, for the same fp32 arithmetic.
- ``pooled_windows`` / ``PooledConv``: a convolution followed by ReLU and max over positions, as one product over
  the im2col windows (each window of an embedded sequence is a contiguous run of width * E numbers), without
  autograd / with its gradient.
- ``LinearCrossEntropy``: the output projection and the (weighted) cross-entropy with its gradient, a chunk of
  rows at a time, in cache: the MLE and policy-gradient loss.

The oneDNN paths apply to fp32 tensors on CPU when this torch has the op (probed once); anywhere else (GPU,
other dtypes, ``plain_kernels()``) the plain torch layers run. BENCHMARKS.md measures both in one process.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

USE_ONEDNN = True  # route linear layers and convolutions on CPU through oneDNN (see ``linear``)


@functools.cache
def _onednn_linear_works() -> bool:
    try:
        x, w, b = torch.ones(2, 3), torch.ones(4, 3), torch.full((4,), -4.0)
        return torch.equal(torch.ops.mkldnn._linear_pointwise(x, w, b, "relu", [], ""), F.relu(F.linear(x, w, b)))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def bf16_autocast(device_type: str, enabled: bool):
    """bfloat16 autocast on the device when enabled (the discriminator's ``d_precision="bf16"``), else nothing
    (no autocast object at all: some torch versions refuse one for some devices even disabled)."""
    return torch.autocast(device_type, torch.bfloat16) if enabled else contextlib.nullcontext()


def _cpu_autocast_test():
    """Whether autocast is on for the CPU: chosen once, as it runs on every ``linear`` call."""
    try:
        torch.is_autocast_enabled("cpu")
        return lambda: torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device
        return torch.is_autocast_cpu_enabled


cpu_autocast_enabled = _cpu_autocast_test()


def onednn_applies(x: torch.Tensor) -> bool:
    return (USE_ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32
            and x.numel() > 0  # oneDNN refuses empty products
            and _onednn_linear_works() and not cpu_autocast_enabled())  # under bf16 autocast torch's layers run in bf16


def rows_per_chunk(x: torch.Tensor, cpu_rows: int, width: int) -> int:
    """Rows of ``x`` to process at a time when each row makes a [width] intermediate (logits over the
    vocabulary): on CPU ``cpu_rows``, measured fastest there because the chunk stays in cache; elsewhere (GPU) as
    many rows as make ~256 MB, since there every chunk costs kernel launches and the cache does not help."""
    return cpu_rows if x.device.type == "cpu" else max(cpu_rows, (1 << 26) // max(1, width))


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will record an operation on these tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _onednn_linear(x, weight, bias, activation="none"):
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], "")


class _OneDNNLinear(torch.autograd.Function):
    """``linear`` with autograd: the forward and both gradient products through oneDNN (no transposed copies)."""

    @staticmethod
    def forward(ctx, x, weight, bias, activation):
        y = _onednn_linear(x, weight, bias, activation)
        ctx.save_for_backward(x, weight, y)
        ctx.activation, ctx.has_bias = activation, bias is not None
        return y

    @staticmethod
    @once_differentiable  # a second derivative (the critic's gradient penalty) must use plain_kernels()
    def backward(ctx, grad_y):
        x, weight, y = ctx.saved_tensors
        if ctx.activation == "relu":
            grad_y = grad_y * (y > 0)
        elif ctx.activation == "sigmoid":
            grad_y = grad_y * y * (1.0 - y)
        grad_x = _onednn_linear(grad_y, weight.t(), None) if ctx.needs_input_grad[0] else None
        grad_weight = _onednn_linear(grad_y.t(), x.t(), None) if ctx.needs_input_grad[1] else None
        grad_bias = grad_y.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str = "none"):
    """activation(x @ weight.T + bias) for activation "none", "relu" or "sigmoid", x [..., in].

    fp32 on CPU goes through oneDNN's fused linear kernel (the one torch.compile uses on CPU), forward and
    backward: on the AMD EPYC of BENCHMARKS.md it runs 2.2x faster than torch.mm (MKL), and the activation is
    applied in the same pass. Anywhere else (GPU, other dtypes, torch without oneDNN, ``plain_kernels()``)
    it is the plain F.linear.
    """
    if onednn_applies(x):
        rows = x.reshape(-1, x.shape[-1])
        if needs_grad(x, weight, bias):
            y = _OneDNNLinear.apply(rows, weight, bias, activation)
        else:
            y = _onednn_linear(rows, weight, bias, activation)
        return y.view(*x.shape[:-1], weight.shape[0])
    y = F.linear(x, weight, bias)
    return y if activation == "none" else F.relu(y) if activation == "relu" else torch.sigmoid(y)


@contextlib.contextmanager
def plain_kernels():
    """Use only torch's own layers inside (``linear``'s oneDNN path has no second derivative)."""
    global USE_ONEDNN
    saved, USE_ONEDNN = USE_ONEDNN, False
    try:
        yield
    finally:
        USE_ONEDNN = saved


def _windows(x: torch.Tensor, width: int) -> torch.Tensor:
    """The im2col windows of x [rows, T', E] (x.stride(1) == E, x.stride(2) == 1): [rows * (T' - width + 1),
    width * E], each window a contiguous run of x (a copy, unless width is 1)."""
    rows, emb = x.shape[0], x.shape[2]
    length = x.shape[1] - width + 1
    return x.as_strided((rows, length, width * emb), (x.stride(0), emb, 1)).reshape(rows * length, width * emb)


def window_weight(weight: torch.Tensor) -> torch.Tensor:
    """A Conv1d weight [maps, E, width] in the windows' layout (``_windows``): [maps, width * E], position-major."""
    maps, emb, width = weight.shape
    return weight.transpose(1, 2).reshape(maps, width * emb)


def pooled_windows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, width: int) -> torch.Tensor:
    """max over window positions of relu(conv(x)) for x [rows, T', E] (x.stride(1) == E, x.stride(2) == 1) and
    the convolution's weight laid out as [maps, width*E] (``window_weight``): one product over the im2col
    windows. No autograd (``PooledConv`` is the same with its gradient)."""
    return _onednn_linear(_windows(x, width), weight, bias, "relu").view(len(x), -1, weight.shape[0]).amax(dim=1)


class PooledConv(torch.autograd.Function):
    """max over positions of relu(conv1d(x)) for embedded x [rows, T, E] (x.stride(1) == E, x.stride(2) == 1,
    T >= width) and a Conv1d's weight [maps, E, width] and bias, with its gradient: the three products of a
    convolution's forward and backward as products over the im2col windows through oneDNN. At the paper's sizes
    the twelve convolutions' forward and backward took 23 ms a batch of 64 this way, against 29 ms for Conv1d,
    ReLU and amax with autograd.

    The gradient is amax's: a pooled map's gradient is shared evenly among the positions that reach its maximum
    (equal windows, e.g. a repeated token, tie), and is zero where the ReLU gave 0 everywhere. The windows are
    kept for the backward rather than copied again: rows * (T - width + 1) * width * E numbers, for the paper's
    twelve widths 14 MB a batch of 64 at T = 20 and 174 MB at T = 128 (the longest text sequences).
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        maps, _, width = weight.shape
        windows = _windows(x, width)
        flat_weight = window_weight(weight)
        positions = x.shape[1] - width + 1
        y = _onednn_linear(windows, flat_weight, bias, "relu").view(len(x), positions, maps)
        pooled = y.amax(dim=1)
        ctx.save_for_backward(windows, flat_weight, y, pooled)
        ctx.x_shape = x.shape
        return pooled

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_pooled):
        windows, flat_weight, y, pooled = ctx.saved_tensors
        rows, length, maps = y.shape
        emb = ctx.x_shape[2]
        width = flat_weight.shape[1] // emb
        at_max = torch.eq(y, pooled.unsqueeze(1), out=torch.empty_like(y))  # 1.0 / 0.0: 10x faster than a bool
        grad_pooled = grad_pooled * (pooled > 0)
        share = grad_pooled / at_max.sum(dim=1)
        grad_y = at_max.mul_(share.unsqueeze(1)).view(rows * length, maps)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_windows = _onednn_linear(grad_y, flat_weight.t(), None).view(rows, length, width, emb)
            grad_x = grad_y.new_zeros(ctx.x_shape)
            for k in range(width):  # window offset k covers positions k .. k + length - 1
                grad_x[:, k:k + length].add_(grad_windows[:, :, k])  # not +=, which copies the slice back
        if ctx.needs_input_grad[1]:
            grad_flat = _onednn_linear(grad_y.t(), windows.t(), None)  # [maps, width * E]
            grad_weight = grad_flat.view(maps, width, emb).transpose(1, 2).contiguous()
        if ctx.needs_input_grad[2]:
            grad_bias = grad_pooled.sum(dim=0)
        return grad_x, grad_weight, grad_bias


def target_log_probs(logits: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor,
                     find_rows: bool | None = None) -> torch.Tensor:
    """log softmax(logits)[r, targets[r]] for each row r, from ``probs = softmax(logits)`` already computed.

    log(probs[target]) is exact to float precision while that probability is a normal float; below 1e-30 (a
    logit ~69 nats under the row's log-sum-exp) it loses precision and at ~1e-45 it is 0, so those rows come
    from the logits' logsumexp instead. ``find_rows`` (default: on CPU) recomputes only those rows, which are
    rare; otherwise (on a GPU, where finding them would wait for the device) every row's logsumexp is computed
    and the exact value picked where needed.
    """
    target_logits = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    target_probs = probs.gather(1, targets.unsqueeze(1)).squeeze(1)
    logp = target_probs.log()
    tiny = target_probs < 1e-30
    if not (logits.device.type == "cpu" if find_rows is None else find_rows):
        return torch.where(tiny, target_logits - logits.logsumexp(1), logp)
    rows = tiny.nonzero().squeeze(1)
    if len(rows):
        logp[rows] = target_logits[rows] - logits[rows].logsumexp(1)
    return logp


class LinearCrossEntropy(torch.autograd.Function):
    """sum_r w_r * -log softmax(h_r W^T + b)[y_r], with its gradient computed in the same pass, chunk by chunk.

    Autograd would keep the whole [rows, V] logits and run log-softmax forward and backward over it, out of
    cache; this computes each chunk's logits, loss and gradient while they are in cache. Same three matrix
    products, fewer passes over memory (the MLE-epoch figure in BENCHMARKS.md measures the difference):
    - the loss comes from the same softmax as the gradient (``target_log_probs``): one pass of exponentials;
    - the gradient of the logits is w_r * (softmax - onehot); the weights w_r are applied to the small sides
      of the two gradient products (the [rows, H] results and the [rows, H] hidden states), not to the
      [rows, V] probabilities, and the bias's gradient sum_r w_r (softmax - onehot)_r comes out of the weight's
      product as one more row: [h * w | w]^T (softmax - onehot), accumulated in that [H + 1, V] layout.
    """

    CHUNK = 128  # rows at a time on CPU (see ``rows_per_chunk``)

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, row_weights):
        needs_grad = any(ctx.needs_input_grad[:3])
        total = hidden.new_zeros(())
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        grad_weight_bias = hidden.new_zeros(hidden.shape[1] + 1, len(weight)) if needs_grad else None
        chunk = rows_per_chunk(hidden, LinearCrossEntropy.CHUNK, len(weight))
        minus_one = hidden.new_full((min(chunk, len(hidden)), 1), -1.0)
        for i in range(0, len(hidden), chunk):
            h, y, w = (x[i:i + chunk] for x in (hidden, targets, row_weights))
            logits = linear(h, weight, bias)
            probs = torch.softmax(logits, dim=1)
            total -= (w * target_log_probs(logits, probs, y)).sum()
            if needs_grad:
                w = w.unsqueeze(1)
                grad = probs.scatter_add_(1, y.unsqueeze(1), minus_one[:len(y)])  # softmax - onehot
                grad_hidden[i:i + chunk] = linear(grad, weight.t(), None).mul_(w)
                weighted = torch.cat([h * w, w], dim=1)  # [rows, H + 1]
                grad_weight_bias += linear(weighted.t(), grad.t(), None)
        if needs_grad:
            grad_weight, grad_bias = grad_weight_bias[:-1].t().contiguous(), grad_weight_bias[-1]
        else:
            grad_weight = grad_bias = None
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        return grad_hidden * grad_output, grad_weight * grad_output, grad_bias * grad_output, None, None
