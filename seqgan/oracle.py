"""The synthetic oracle of the paper's Table 1: a fixed random LSTM that plays the real data.

The oracle ("target LSTM") is exactly the network of ``../shared/seqgan-reference/README.md``:

    x_0 = E[0], h = c = 0                     (token 0 starts every sequence and is also an ordinary token)
    i = sigmoid(x Wi + h Ui + bi)     f = sigmoid(x Wf + h Uf + bf)     o = sigmoid(x Wog + h Uog + bog)
    c = f * c + i * tanh(x Wc + h Uc + bc)    h = o * tanh(c)           p(next) = softmax(h Wo + bo)

That is an ordinary LSTM language model, so the oracle *is* a ``Generator`` whose weights are those arrays
(PyTorch's gate order is i, f, g, o and it multiplies by W transposed). A random oracle draws every parameter
from N(0, 1) as the paper does; the paper's own oracle loads from its 15-array pickle through an unpickler
that admits numpy arrays and nothing else.

NLL-oracle = mean over all tokens of -log p_oracle(token | prefix), for sequences drawn from the model under
test.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write_bytes
from .corpus import sequence_nll, write_token_file
from .errors import InputError
from .models import Generator

ARRAY_NAMES = ("E", "Wi", "Ui", "bi", "Wf", "Uf", "bf", "Wog", "Uog", "bog", "Wc", "Uc", "bc", "Wo", "bo")
PAPER_VOCAB, PAPER_SEQ_LEN, PAPER_DIM = 5000, 20, 32


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and refuses every other global, so a hostile pickle cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # Python 3 writes array bytes this way in protocol-2 pickles

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        if module == "numpy.core.multiarray":  # Python-2 era name; numpy 2 moved it
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def load_oracle_arrays(path: str | Path) -> list[np.ndarray]:
    """The 15 oracle arrays from the paper's pickle (Python 2 or 3) or from our own ``.pt`` file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such oracle parameter file")
    data = path.read_bytes()
    try:
        if data[:2] == b"PK":  # a torch zip file: our own format
            saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            arrays = [saved[name].numpy() for name in ARRAY_NAMES]
        else:
            arrays = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except KeyError as exc:  # a torch file without the oracle's arrays, e.g. a checkpoint
        raise InputError(path, f"not oracle parameters: a torch file without the array {exc}") from None
    except Exception as exc:
        refused = re.search(r"(?:GLOBAL|refusing to load) ([\w.]+)", str(exc))
        if refused:  # torch's and our unpickler's words for an object they will not build
            raise InputError(path, f"refusing to load the Python object {refused.group(1)}: oracle parameters are "
                                   f"arrays only (other objects could run code)") from None
        raise InputError(path, f"cannot read oracle parameters ({type(exc).__name__}; not the paper's pickle nor "
                               f"a file of seqgan's own)") from None
    if not isinstance(arrays, (list, tuple)) or len(arrays) != len(ARRAY_NAMES):
        raise InputError(path, f"expected a list of {len(ARRAY_NAMES)} arrays ({', '.join(ARRAY_NAMES)})")
    try:
        arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"oracle parameters are not numeric arrays ({exc})") from None
    if arrays[0].ndim != 2 or arrays[1].ndim != 2:
        raise InputError(path, "E and Wi must be matrices")
    (vocab, emb), hidden = arrays[0].shape, arrays[1].shape[1]
    expected = {"E": (vocab, emb), "Wo": (hidden, vocab), "bo": (vocab,)}
    for gate in ("i", "f", "og", "c"):
        expected.update({f"W{gate}": (emb, hidden), f"U{gate}": (hidden, hidden), f"b{gate}": (hidden,)})
    for name, array in zip(ARRAY_NAMES, arrays):
        if array.shape != expected[name]:
            raise InputError(path, f"array {name} has shape {array.shape}, the oracle's equations need "
                                   f"{expected[name]}")
        if not np.isfinite(array).all():
            raise InputError(path, f"array {name} holds numbers that are not finite (nan or inf)")
    return arrays


def oracle_from_arrays(arrays: list[np.ndarray]) -> Generator:
    E, Wi, Ui, bi, Wf, Uf, bf, Wog, Uog, bog, Wc, Uc, bc, Wo, bo = (torch.from_numpy(np.array(a)) for a in arrays)
    vocab, emb = E.shape
    hidden = Ui.shape[0]
    oracle = Generator(vocab, emb, hidden, start_token=0)
    with torch.no_grad():
        oracle.embedding.weight.copy_(E)
        oracle.lstm.weight_ih_l0.copy_(torch.cat([Wi.T, Wf.T, Wc.T, Wog.T]))
        oracle.lstm.weight_hh_l0.copy_(torch.cat([Ui.T, Uf.T, Uc.T, Uog.T]))
        oracle.lstm.bias_ih_l0.copy_(torch.cat([bi, bf, bc, bog]))
        oracle.lstm.bias_hh_l0.zero_()
        oracle.output.weight.copy_(Wo.T)
        oracle.output.bias.copy_(bo)
    return oracle.eval().requires_grad_(False)


def random_oracle(seed: int, vocab_size: int = PAPER_VOCAB, emb_dim: int = PAPER_DIM,
                  hidden_dim: int = PAPER_DIM) -> Generator:
    """A fresh oracle with every parameter drawn from N(0, 1), as in the paper."""
    rng = torch.Generator().manual_seed(seed)
    oracle = Generator(vocab_size, emb_dim, hidden_dim, start_token=0)
    with torch.no_grad():
        for p in oracle.parameters():
            p.copy_(torch.randn(p.shape, generator=rng))
        oracle.lstm.bias_hh_l0.zero_()  # the equations have one bias per gate
    return oracle.eval().requires_grad_(False)


def oracle_arrays(oracle: Generator) -> dict[str, torch.Tensor]:
    """The oracle as the 15 named arrays of the equations (inverse of ``oracle_from_arrays``)."""
    H = oracle.hidden_dim
    w_ih, w_hh = oracle.lstm.weight_ih_l0.detach(), oracle.lstm.weight_hh_l0.detach()
    bias = (oracle.lstm.bias_ih_l0 + oracle.lstm.bias_hh_l0).detach()
    gate = {name: k for k, name in enumerate(("i", "f", "c", "og"))}
    out = {"E": oracle.embedding.weight.detach().clone()}
    for name in ("i", "f", "og", "c"):
        rows = slice(gate[name] * H, (gate[name] + 1) * H)
        out[f"W{name}"] = w_ih[rows].T.contiguous()
        out[f"U{name}"] = w_hh[rows].T.contiguous()
        out[f"b{name}"] = bias[rows].clone()
    out["Wo"] = oracle.output.weight.detach().T.contiguous()
    out["bo"] = oracle.output.bias.detach().clone()
    return {name: out[name] for name in ARRAY_NAMES}


def save_oracle(oracle: Generator, path: str | Path) -> None:
    buffer = io.BytesIO()
    torch.save(oracle_arrays(oracle), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_oracle(path: str | Path) -> Generator:
    return oracle_from_arrays(load_oracle_arrays(path))


def write_task(oracle: Generator, folder: str | Path, num_train: int, seq_len: int, seed: int):
    """The synthetic task as a run holds it: ``num_train`` training and min(num_train, 2,000) held-out sequences
    of ``seq_len`` sampled from the oracle (seeded), and the oracle, written into ``folder`` (train.txt,
    heldout.txt, oracle.pt). Returns (train, heldout)."""
    folder = Path(folder)
    torch.manual_seed(seed)
    train = oracle.sample(num_train, seq_len)
    heldout = oracle.sample(min(num_train, 2_000), seq_len)
    save_oracle(oracle, folder / "oracle.pt")
    write_token_file(train, folder / "train.txt")
    write_token_file(heldout, folder / "heldout.txt")
    return train, heldout


def nll_under(model: Generator, tokens: torch.Tensor, batch_size: int = 2048, temperature: float = 1.0) -> float:
    """Mean per-token negative log-likelihood of ``tokens`` [N, T] under ``model`` (sampled at ``temperature``)."""
    return sequence_nll(model, tokens, batch_size=batch_size, temperature=temperature)


def oracle_evaluator(oracle: Generator, num_samples: int, seq_len: int, heldout: torch.Tensor | None = None,
                     diversity_samples: int = 500):
    """Trainer evaluation for the synthetic task: NLL-oracle of G's samples (quality), NLL-test of held-out data
    (coverage: it rises when G drops modes of the oracle), and Self-BLEU-4 and distinct-2 of the first
    ``diversity_samples`` samples (diversity; 0 leaves them out)."""
    from .metrics import diversity

    def evaluate(generator: Generator, rng: torch.Generator) -> dict:
        samples = generator.sample(num_samples, seq_len, generator=rng)
        metrics = {"nll_oracle": nll_under(oracle, samples)}
        if heldout is not None:
            metrics["nll_test"] = nll_under(generator, heldout)
        kept = samples[:diversity_samples].tolist()
        if len(kept) >= 2:
            metrics.update(diversity(kept))
        return metrics

    return evaluate
