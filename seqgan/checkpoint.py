"""Self-contained checkpoint bundles, written atomically and loaded without unpickling code.

A bundle is one ``torch.save`` file of plain data: tensors, numbers, strings, lists and dicts. It holds

    format       "seqgan-studio/2" (version 1 bundles load too, upgraded: see ``upgraded``)
    kind         "oracle" | "tokens" | "text" | "music"  (what the token ids mean)
    role         "latest" | "mle" | "seqgan"             (which generator this file is meant to serve)
    config       the training configuration (a dict)
    position     {"unit": next schedule unit to run, "total": units in the schedule}
    generator, discriminator            state dicts
    optimizers   {"mle", "pg", "d"}     optimizer state dicts
    rng          {"torch": ByteTensor, "cuda": [ByteTensor, ...]}
    tokenizer    uint8 tensor of the tokenizer's bytes, or None
    extra        a dict of plain metadata for the task (e.g. where the oracle lives)
    digest       a checksum of all the rest (``content_digest``), checked on loading; files saved before it
                 existed have none

Loading always uses ``weights_only=True``: a file that needs anything else is refused, so a tampered or
foreign upload cannot run code. The same file resumes training, samples, downloads and uploads.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path

import torch

from .errors import InputError

FORMAT = "seqgan-studio/2"
EARLIER_FORMATS = ("seqgan-studio/1",)
REQUIRED_KEYS = ("format", "kind", "config", "generator")
TRAINING_ONLY = ("discriminator", "optimizers", "rng")  # what a slim bundle (``slim_bundle``) leaves out
KINDS = ("tokens", "oracle", "text", "music")  # what a generator makes: token ids, the oracle task's, text, melodies
ROLES = ("mle", "seqgan", "latest")  # the generator after MLE, after adversarial training; the whole state


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` so that readers see either the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; a run's files are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def content_digest(bundle: dict) -> str:
    """A BLAKE2b digest of everything in a bundle but its own ``digest``: every tensor's bytes, dtype and shape,
    every other value's repr, under its key path. torch keeps a CRC of each record but never checks it on
    loading, so without this a flipped byte inside a tensor loads silently."""
    h = hashlib.blake2b(digest_size=20)

    def add(value) -> None:
        if isinstance(value, torch.Tensor):
            h.update(f"tensor {value.dtype} {tuple(value.shape)};".encode())
            h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=repr):
                h.update(f"key {key!r};".encode())
                add(value[key])
        elif isinstance(value, (list, tuple)):
            h.update(f"list {len(value)};".encode())
            for item in value:
                add(item)
        else:
            h.update(f"{value!r};".encode())

    add({key: value for key, value in bundle.items() if key != "digest"})
    return h.hexdigest()


def bundle_bytes(bundle: dict) -> bytes:
    """The file's bytes, with the bundle's ``digest`` of its content (checked by ``load_bundle``)."""
    buffer = io.BytesIO()
    torch.save({**bundle, "digest": content_digest(bundle)}, buffer)
    return buffer.getvalue()


def save_bundle(bundle: dict, path: str | os.PathLike) -> None:
    atomic_write_bytes(path, bundle_bytes(bundle))


def load_bundle(source: str | os.PathLike | bytes, name: str | None = None, map_location="cpu") -> dict:
    """Load and check a bundle from a path or from uploaded bytes; any problem is an ``InputError``."""
    if isinstance(source, (bytes, bytearray)):
        name = name or "uploaded checkpoint"
        if not source:
            raise InputError(name, "the file is empty")
        stream = io.BytesIO(source)
    else:
        name = name or str(source)
        if not Path(source).is_file():
            raise InputError(name, "no such checkpoint file")
        stream = source
    try:
        with warnings.catch_warnings():  # torch warns about a foreign file's pickle protocol; the error says enough
            warnings.simplefilter("ignore", UserWarning)
            bundle = torch.load(stream, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        if "unsupported global" in str(exc).lower():  # torch's words for a pickled object it will not build
            raise InputError(name, "not a SeqGAN Studio checkpoint: the file holds Python objects besides tensors "
                                   "and plain data, which are never loaded (they could run code)") from None
        raise InputError(name, "not a SeqGAN Studio checkpoint or the file is damaged (torch cannot read it: "
                               f"{type(exc).__name__})") from None
    if not isinstance(bundle, dict) or bundle.get("format") not in (FORMAT, *EARLIER_FORMATS):
        raise InputError(name, f"not a SeqGAN Studio checkpoint (expected format {FORMAT!r})")
    if "digest" in bundle and bundle["digest"] != content_digest(bundle):  # bundles before digests have none
        raise InputError(name, "the file was changed or damaged after it was saved (its content does not match "
                               "the checksum saved with it)")
    missing = [k for k in REQUIRED_KEYS if k not in bundle]
    if missing:
        raise InputError(name, f"checkpoint is missing {', '.join(missing)}")
    tokenizer, generator = bundle.get("tokenizer"), bundle["generator"]
    if not (isinstance(bundle["config"], dict) and isinstance(generator, dict)
            and all(isinstance(t, torch.Tensor) for t in generator.values())
            and (tokenizer is None or (isinstance(tokenizer, torch.Tensor) and tokenizer.dtype == torch.uint8))):
        raise InputError(name, "its config, generator or tokenizer is not what SeqGAN Studio writes")
    if bundle["kind"] not in KINDS:
        raise InputError(name, f"unknown checkpoint kind {str(bundle.get('kind'))[:40]!r} (expected one of "
                               f"{', '.join(KINDS)})")
    if bundle.get("role", "latest") not in ROLES:
        raise InputError(name, f"unknown checkpoint role {str(bundle.get('role'))[:40]!r} (expected one of "
                               f"{', '.join(ROLES)})")
    position = bundle.get("position", {})
    unit, total = (position.get(k, 0) for k in ("unit", "total")) if isinstance(position, dict) else (None, None)
    if not (isinstance(unit, int) and isinstance(total, int) and 0 <= unit <= total):
        raise InputError(name, "the checkpoint's position in the schedule is not what SeqGAN Studio writes")
    return upgraded(bundle, name)


def upgraded(bundle: dict, name: str) -> dict:
    """A version 1 bundle as version 2, computing the same functions, marked ``upgraded_from``: it samples,
    scores and compares, but training refuses to continue it (version 1 trained other networks; see
    ``Trainer.restore``). Version 1's highway layer added a constant -2 to its gate (the original's ``highway``
    default, which the original's discriminator overrides with 0); version 2 adds none, so the constant moves
    into the gate's bias. Version 1's generator also had a second LSTM bias, ``bias_hh``: it loads as it is."""
    if bundle["format"] == FORMAT:
        return bundle
    if "discriminator" in bundle:
        discriminator = copy.copy(bundle["discriminator"])  # a state dict: copy keeps its _metadata
        gate_bias = discriminator.get("highway.gate.bias") if isinstance(discriminator, dict) else None
        if not isinstance(gate_bias, torch.Tensor):
            raise InputError(name, "a version 1 checkpoint without the discriminator's highway.gate.bias")
        discriminator["highway.gate.bias"] = gate_bias - 2.0
        bundle = {**bundle, "discriminator": discriminator}
    return {**bundle, "format": FORMAT, "upgraded_from": bundle["format"]}


def tokenizer_tensor(data: bytes | None):
    return None if data is None else torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def tokenizer_bytes(bundle: dict) -> bytes | None:
    t = bundle.get("tokenizer")
    return None if t is None else bytes(t.numpy().tobytes())


def slim_bundle(bundle: dict) -> dict:
    """The bundle without what only training needs (discriminator, optimizers, RNG state): it samples,
    compares and downloads like the full one, at a fraction of the size, but cannot resume training."""
    return {key: value for key, value in bundle.items() if key not in TRAINING_ONLY}


def generator_from_bundle(bundle: dict, name: str = "checkpoint"):
    """The bundle's generator, built from its config and loaded with its weights, in eval mode (on the CPU).

    Checked before anything is built, as an upload may have been edited: the configuration's sizes against the
    weights' shapes (else a tampered vocabulary size would allocate whatever it says), the start token inside
    the vocabulary, and every weight finite. Any problem is an ``InputError`` naming ``name``."""
    from .models import Generator

    weights, c = bundle["generator"], bundle["config"]  # a dict of tensors and a dict (``load_bundle`` checks)
    try:
        vocab, emb, hidden, start = (int(c[k]) for k in ("vocab_size", "g_emb_dim", "g_hidden_dim", "start_token"))
    except (KeyError, TypeError, ValueError):
        raise InputError(name, "the configuration lacks the generator's sizes") from None
    for key, shape in (("embedding.weight", (vocab, emb)), ("output.weight", (vocab, hidden))):
        found = tuple(weights[key].shape) if key in weights else None
        if found != shape:
            raise InputError(name, f"the generator's {key} is {'missing' if found is None else list(found)}, "
                                   f"but the configuration says {list(shape)}")
    if not 0 <= start < vocab:
        raise InputError(name, f"start_token {start} is outside the vocabulary 0..{vocab - 1}")
    broken = [key for key, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if broken:
        raise InputError(name, f"the generator's {', '.join(broken)} {'holds' if len(broken) == 1 else 'hold'} "
                               f"numbers that are not finite (nan or inf)")
    generator = Generator(vocab, emb, hidden, start)
    expected = set(generator.state_dict())
    if set(weights) != expected:
        odd, lacking = sorted(set(weights) - expected), sorted(expected - set(weights))
        parts = ([f"unexpected {', '.join(odd)[:120]}"] if odd else []) + \
                ([f"missing {', '.join(lacking)}"] if lacking else [])
        raise InputError(name, f"the generator's weights are not the model's: {'; '.join(parts)}")
    try:
        generator.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise InputError(name, f"the generator's weights do not fit its configuration ({first})") from None
    return generator.eval()
