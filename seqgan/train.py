"""The SeqGAN training schedule, as one resumable loop over units of work.

The schedule (the original code's defaults in ``TrainConfig``):

    mle          mle_epochs x one epoch of maximum-likelihood training of G           (unit = one epoch)
    d_pretrain   d_pretrain_rounds x (sample num_negatives from G, d_epochs epochs of D)  (unit = one round)
    adversarial  adv_iters x (g_steps x policy-gradient step on a batch with Monte-Carlo rewards,
                              then d_steps x (fresh negatives, d_epochs epochs of D))  (unit = one iteration)

Every unit ends with an event (a plain dict) sent to the callback and appended to ``metrics.jsonl``; the
generator is evaluated every ``eval_every`` units of the mle and adversarial phases (and once before
training). Checkpoints hold everything needed to continue exactly: G, D, the three optimizers, the RNG state
and the next unit. ``mle.pt`` is the MLE baseline (the generator at the end of pre-training).

MLE reads its batches in one fixed order every epoch, as the original reads its file of training samples
(``mle_order="reshuffle"`` draws a new order each epoch). Difference from the original code, deliberate:
evaluation draws from its own seeded RNG so that evaluating more or less often does not change training.

Options beyond the paper, all off by default (``TrainConfig``): a reward baseline (``baseline="mean"``), reward
normalisation (``reward_norm="std"``: at each time step, rewards minus their batch mean, divided by their batch
standard deviation), and a Wasserstein-style critic in place of the classifier (``critic="wasserstein"``: D is
trained to score real sequences above generated ones with a gradient penalty on interpolated embeddings, WGAN-GP
(Gulrajani et al. 2017), and its unbounded score is the reward instead of P(real)). For speed,
``d_precision="bf16"`` runs the discriminator (its training and the scoring of roll-outs) under bfloat16
autocast with fp32 weights, optimizer, losses and rewards; the generator, and so what it samples, stays fp32.

On several ranks (launched by torchrun; see distributed.py) the same schedule runs on every rank in lockstep:
each MLE batch is split across ranks, each rank draws and trains the discriminator on its share of the
negatives, and each rank samples and rolls out its share of the policy-gradient batch; DDP combines the
gradients. Rank 0 alone evaluates and writes; the events carry figures summed or averaged over ranks.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

from . import flops
from .checkpoint import FORMAT, TRAINING_ONLY, load_bundle, save_bundle, tokenizer_tensor
from .corpus import MAX_SEQ_LEN, write_token_file
from .distributed import SINGLE, DistContext, Objective
from .errors import ConfigError, InputError, Stopped
from .kernels import bf16_autocast, plain_kernels
from .models import PAPER_FILTER_SIZES, PAPER_NUM_FILTERS, Discriminator, Generator, sample_from_logits
from .rollout import RewardFn, discriminator_reward, rollout_rewards
from .runs import RunDir

# A stop request for the whole process: the experiment and study commands set it on SIGTERM or Ctrl-C, and the
# Trainer that is running finishes its unit, saves latest.pt and stops; run_to_end then raises Stopped.
STOP = threading.Event()
SAMPLES_KEPT = 32  # sequences written to samples/ at each evaluation
D_SCORED = 2000  # sequences of each kind the discriminator scores at an adversarial evaluation
REWARDS = ("discriminator", "bleu")
BASELINES = ("none", "mean")
REWARD_NORMS = ("none", "std")
CRITICS = ("classifier", "wasserstein")
PRECISIONS = ("fp32", "bf16")
ADAM_EPSILONS = ("tf1", "torch")
MLE_ORDERS = ("fixed", "reshuffle")
ADAM_EPSILON = 1e-8  # Adam's epsilon in the original (TensorFlow's default) and in torch
# Sizes far beyond any real use (the paper's are 64, 16, 10,000, 5,000, 20, 32 and 64): a value above one is a
# typo that would otherwise run out of memory or hang in its first unit.
UPPER_LIMITS = {"batch_size": 1 << 16, "d_batch_size": 1 << 16, "rollouts": 1024, "num_negatives": 10_000_000,
                "eval_samples": 1_000_000, "vocab_size": 1_000_000, "seq_len": MAX_SEQ_LEN, "g_emb_dim": 1 << 14,
                "g_hidden_dim": 1 << 14, "d_emb_dim": 1 << 14}

MAX_SEED = 2 ** 32 - 1

CHOICES = {"reward": REWARDS, "baseline": BASELINES, "reward_norm": REWARD_NORMS, "critic": CRITICS,
           "d_precision": PRECISIONS, "adam_epsilon": ADAM_EPSILONS, "mle_order": MLE_ORDERS}
# What each TrainConfig field means, for the command line's --help and the app's option boxes.
OPTION_HELP = {
    "vocab_size": "token ids 0..vocab_size-1 (a corpus decides it; for text, the SentencePiece vocabulary)",
    "seq_len": "tokens per sequence (a corpus decides it unless given; for the oracle task, its samples' length)",
    "start_token": "the generator's first input (the original: 0, also an ordinary token)",
    "g_emb_dim": "generator embedding size",
    "g_hidden_dim": "generator LSTM size",
    "batch_size": "sequences per MLE batch and per policy-gradient step",
    "mle_epochs": "MLE pre-training epochs",
    "mle_lr": "MLE learning rate (Adam)",
    "mle_order": "fixed: MLE reads the training sequences in one order, drawn from the seed, every epoch (the "
                 "original reads its file in order); reshuffle: a new order every epoch",
    "scheduled_sampling": "final chance of feeding G its own token during MLE (0 = plain MLE)",
    "grad_clip": "global-norm clip of the generator's gradients",
    "d_emb_dim": "discriminator embedding size",
    "d_filter_sizes": "convolution widths",
    "d_num_filters": "feature maps per width (as many as widths)",
    "d_dropout_keep": "discriminator dropout keep probability",
    "d_l2": "L2 weight on the discriminator's output layer",
    "d_lr": "discriminator learning rate (Adam)",
    "d_batch_size": "discriminator batch size",
    "d_pretrain_rounds": "discriminator pre-training rounds (fresh negatives each)",
    "d_epochs": "discriminator epochs per round",
    "num_negatives": "generated sequences per discriminator round (and as many real ones)",
    "d_precision": "bf16: the discriminator trains and scores in bfloat16 (weights, Adam and rewards stay fp32)",
    "adam_epsilon": "where every Adam adds its epsilon: tf1 = the original's TensorFlow 1, to sqrt(v) before the bias "
                    "correction; torch = torch's, after it (they differ where gradients are below ~1e-5)",
    "adv_iters": "adversarial iterations",
    "g_steps": "policy-gradient steps per adversarial iteration",
    "d_steps": "discriminator rounds per adversarial iteration",
    "rollouts": "Monte-Carlo completions per prefix for the rewards",
    "pg_lr": "policy-gradient learning rate (Adam)",
    "reward": "discriminator (SeqGAN) or bleu (PG-BLEU, which the oracle experiment sets up)",
    "bleu_n": "PG-BLEU's n-gram order",
    "baseline": "mean: subtract the batch-mean reward at each step (variance reduction; the paper has none)",
    "reward_norm": "std: standardise the rewards at each step over the batch (the paper does not)",
    "critic": "wasserstein: D is a WGAN-GP critic and its score the reward, instead of the classifier's P(real)",
    "gp_weight": "the Wasserstein critic's gradient-penalty weight (WGAN-GP's lambda)",
    "eval_every": "evaluate the generator every N units of the MLE and adversarial phases",
    "eval_samples": "generated sequences per evaluation",
    "seed": "random seed",
    "device": "auto (CUDA when there is one), cpu, cuda, cuda:N or mps",
    "checkpoint_seconds": "save latest.pt at least this often (and at the end of every phase)",
}


def paper_discriminator(seq_len: int, scale: float = 1.0) -> dict:
    """The paper's convolution widths that fit sequences of ``seq_len`` tokens, with ``scale`` times its feature
    maps per width, as TrainConfig's ``d_filter_sizes`` and ``d_num_filters`` (scale 0.25: the quarter-size
    discriminator of the cpu presets)."""
    pairs = [(w, max(1, round(n * scale))) for w, n in zip(PAPER_FILTER_SIZES, PAPER_NUM_FILTERS) if w <= seq_len]
    return {"d_filter_sizes": [w for w, _ in pairs], "d_num_filters": [n for _, n in pairs]}


def resolve_d_scale(settings: dict, seq_len: int) -> dict:
    """``settings`` (a preset's TrainConfig values) with its ``d_scale`` entry, if any, replaced by the paper's
    discriminator at that scale for sequences of ``seq_len`` tokens (``paper_discriminator``). Explicit
    ``d_filter_sizes`` and ``d_num_filters`` in ``settings`` win (give both: one alone would not match the other's
    length, which ``TrainConfig.validate`` reports)."""
    settings = dict(settings)
    if "d_scale" not in settings:
        return settings
    return {**paper_discriminator(seq_len, settings.pop("d_scale")), **settings}


@dataclass
class TrainConfig:
    """Every count and rate of a run. Defaults are the original SeqGAN code's (synthetic-data experiment)."""

    vocab_size: int = 5000
    seq_len: int = 20
    start_token: int = 0
    # generator
    g_emb_dim: int = 32
    g_hidden_dim: int = 32
    batch_size: int = 64
    mle_epochs: int = 120
    mle_lr: float = 0.01
    mle_order: str = "fixed"  # "reshuffle": a new order of the MLE batches every epoch
    scheduled_sampling: float = 0.0  # final probability of feeding G its own token (Bengio et al. 2015); 0 = MLE
    grad_clip: float = 5.0
    # discriminator (filter lists empty = the paper's, minus widths longer than seq_len)
    d_emb_dim: int = 64
    d_filter_sizes: list[int] = field(default_factory=list)
    d_num_filters: list[int] = field(default_factory=list)
    d_dropout_keep: float = 0.75
    d_l2: float = 0.2
    d_lr: float = 1e-4
    d_batch_size: int = 64
    d_pretrain_rounds: int = 50
    d_epochs: int = 3
    num_negatives: int = 10000
    d_precision: str = "fp32"  # "bf16": D trains and scores under bfloat16 autocast (G stays fp32)
    # adversarial training
    adv_iters: int = 200
    g_steps: int = 1
    d_steps: int = 5
    rollouts: int = 16
    pg_lr: float = 0.01
    reward: str = "discriminator"  # "bleu": PG-BLEU, the rollouts scored by BLEU against the training data
    bleu_n: int = 4
    baseline: str = "none"  # "mean": subtract the batch-mean reward at each step (variance reduction)
    reward_norm: str = "none"  # "std": standardise the rewards at each step over the batch (mean 0, sd 1)
    critic: str = "classifier"  # "wasserstein": D is a WGAN-GP critic and its score is the reward
    gp_weight: float = 10.0  # the critic's gradient-penalty weight (WGAN-GP's lambda)
    adam_epsilon: str = "tf1"  # "torch": torch's placement of Adam's epsilon (see tf1_adam_epsilon)
    # bookkeeping
    eval_every: int = 5
    eval_samples: int = 10000
    seed: int = 0
    device: str = "auto"
    checkpoint_seconds: float = 120.0

    def __post_init__(self):
        if not self.d_filter_sizes and not self.d_num_filters:
            paper = paper_discriminator(self.seq_len)
            self.d_filter_sizes, self.d_num_filters = paper["d_filter_sizes"], paper["d_num_filters"]
        self.d_filter_sizes = [int(w) for w in self.d_filter_sizes]
        self.d_num_filters = [int(n) for n in self.d_num_filters]

    def validate(self) -> "TrainConfig":
        def need(ok, message):
            if not ok:
                raise ConfigError(message)

        positive = ["vocab_size", "g_emb_dim", "g_hidden_dim", "batch_size", "d_emb_dim", "d_batch_size",
                    "num_negatives", "rollouts", "eval_every", "eval_samples", "bleu_n"]
        for name in positive:
            need(getattr(self, name) >= 1, f"{name} must be at least 1 (got {getattr(self, name)})")
        for name, most in UPPER_LIMITS.items():  # far beyond any use: a typo, not a wish, that would hang the job
            need(getattr(self, name) <= most, f"{name} must be at most {most:,} (got {getattr(self, name):,})")
        counts = ["mle_epochs", "d_pretrain_rounds", "d_epochs", "adv_iters", "g_steps", "d_steps"]
        for name in counts:
            need(getattr(self, name) >= 0, f"{name} must not be negative (got {getattr(self, name)})")
        for name in ["mle_lr", "pg_lr", "d_lr", "grad_clip"]:
            value = getattr(self, name)
            need(math.isfinite(value) and value > 0, f"{name} must be a positive number (got {value})")
        need(self.seq_len >= 2, f"seq_len must be at least 2 (got {self.seq_len})")
        # evaluation seeds are seed * 1,000,003 + unit, which torch must take as a 64-bit number
        need(0 <= self.seed <= MAX_SEED, f"seed must be within 0..{MAX_SEED:,} (got {self.seed:,})")
        need(0 <= self.start_token < self.vocab_size,
             f"start_token {self.start_token} is outside the vocabulary 0..{self.vocab_size - 1}")
        need(0.0 <= self.scheduled_sampling <= 1.0,
             f"scheduled_sampling must be within [0, 1] (got {self.scheduled_sampling})")
        need(0.0 < self.d_dropout_keep <= 1.0, f"d_dropout_keep must be within (0, 1] (got {self.d_dropout_keep})")
        need(self.d_l2 >= 0, f"d_l2 must not be negative (got {self.d_l2})")
        need(len(self.d_filter_sizes) > 0, "d_filter_sizes: the discriminator needs at least one filter width")
        need(all(1 <= w <= self.seq_len for w in self.d_filter_sizes),
             f"d_filter_sizes: every width must be within 1..seq_len={self.seq_len} (got {self.d_filter_sizes})")
        need(all(n >= 1 for n in self.d_num_filters),
             f"d_num_filters: every count must be at least 1 (got {self.d_num_filters})")
        need(len(self.d_filter_sizes) == len(self.d_num_filters),
             f"d_num_filters needs one count per width of d_filter_sizes (widths {self.d_filter_sizes}, "
             f"counts {self.d_num_filters})")
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            need(value in allowed, f"{name} must be one of {', '.join(allowed)} (got {value!r})")
        need(math.isfinite(self.gp_weight) and self.gp_weight >= 0,
             f"gp_weight must not be negative (got {self.gp_weight})")
        need(self.checkpoint_seconds >= 0, "checkpoint_seconds must not be negative")
        need(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
             f"device must be auto, cpu, cuda, cuda:N or mps (got {self.device!r})")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
        # configurations saved before an option existed were made with the behaviour of that time
        return cls(**{"adam_epsilon": "torch", "mle_order": "reshuffle", **data})

    def units(self) -> list[tuple[str, int]]:
        """The schedule as (phase, index) pairs; PG-BLEU has no discriminator to pre-train."""
        d_rounds = self.d_pretrain_rounds if self.reward == "discriminator" else 0
        return ([("mle", i) for i in range(self.mle_epochs)] + [("d_pretrain", i) for i in range(d_rounds)]
                + [("adversarial", i) for i in range(self.adv_iters)])


def settings_differ(config: TrainConfig, saved: dict, ignored=("device", "checkpoint_seconds")) -> list[str]:
    """The training settings in which a checkpoint's configuration ``saved`` differs from ``config``, but for the
    ``ignored`` ones (by default where a run trains and how often it saves: they do not change what it computes)."""
    ours, theirs = config.to_dict(), TrainConfig.from_dict(saved).to_dict()
    return sorted(k for k in ours.keys() | theirs.keys() if k not in ignored and ours.get(k) != theirs.get(k))


def resolve_device(name: str) -> torch.device:
    """The torch device for a config's ``device``; one this machine lacks is a ``ConfigError`` here, not a CUDA
    error at the first tensor moved there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps (got {name!r})") from None
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} was asked for but this torch has no MPS (Apple GPU) support here")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} was asked for but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def bf16_capable(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: CPUs do (through oneDNN, fast with AVX-512 BF16); NVIDIA
    GPUs from Ampere (compute capability 8.0) on. ``torch.cuda.is_bf16_supported()`` also says yes for older
    GPUs that only emulate it, slower than fp32, and asks about the current GPU rather than this one."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 0)


Evaluator = Callable[[Generator, torch.Generator], dict]


def scheduled_sampling_nll(G: Generator, tokens: torch.Tensor, own_prob: float) -> torch.Tensor:
    """MLE loss where each input token is, with probability ``own_prob``, G's own draw instead of the data's."""
    token = torch.full_like(tokens[:, 0], G.start_token)
    state, losses = None, []
    for t in range(tokens.shape[1]):
        hidden, state = G.step(token, state)
        logits = G.logits(hidden)
        losses.append(F.cross_entropy(logits, tokens[:, t]))
        own = sample_from_logits(logits.detach())
        use_own = torch.rand(len(token), device=token.device) < own_prob
        token = torch.where(use_own, own, tokens[:, t])
    return torch.stack(losses).mean()


def discriminator_loss(D: Discriminator, tokens: torch.Tensor, labels: torch.Tensor):
    """D's training loss on a batch, and its logits (for the accuracy)."""
    logits = D(tokens).float()  # bf16 under d_precision="bf16": the loss is taken in fp32
    return D.loss(logits, labels), logits


def adam(parameters, lr: float) -> torch.optim.Adam:
    """Adam with torch's defaults (as the original's TensorFlow Adam: betas 0.9/0.999), fused into one kernel
    where this torch has that for the device: a quarter of a discriminator epoch on CPU was the ~10 separate
    passes of the unfused update (BENCHMARKS.md)."""
    parameters = list(parameters)
    try:
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # torch < 2.4 on CPU, or a device without the fused kernel
        return torch.optim.Adam(parameters, lr=lr)


def tf1_adam_epsilon(optimizer: torch.optim.Adam, step: int) -> None:
    """Make torch's Adam take TensorFlow 1's update at ``step`` (1, 2, ...). TensorFlow 1 adds epsilon to sqrt(v)
    before the bias correction, lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps); torch adds it after,
    lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps). With eps / sqrt(1 - b2^t) in torch's formula the two are
    equal. Against torch's, TensorFlow's epsilon weighs 1 / sqrt(1 - b2^t) times more, 32x at the first step and
    2.3x at the 200th: it damps the updates of entries with small gradients (a rare token's embedding) in an
    optimizer's first thousand or so steps, which are all 200 of the policy gradient's."""
    for group in optimizer.param_groups:
        group["eps"] = ADAM_EPSILON / math.sqrt(1.0 - group["betas"][1] ** step)


def check_token_ids(what: str, tokens: torch.Tensor, config: TrainConfig) -> None:
    """``tokens`` must be [N, seq_len] ids of the config's vocabulary (a ``ConfigError`` naming ``what``)."""
    if tokens.dim() != 2 or tokens.shape[1] != config.seq_len:
        raise ConfigError(f"{what} must be [N, {config.seq_len}] token ids, got {list(tokens.shape)}")
    if len(tokens) and (int(tokens.min()) < 0 or int(tokens.max()) >= config.vocab_size):
        raise ConfigError(f"{what} has token ids outside 0..{config.vocab_size - 1}")


def _with_implementation_of(optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """A saved optimizer state whose groups use ``optimizer``'s implementation (fused or not, chosen for this
    machine by ``adam``) rather than the one of the machine that saved it; the numbers are the same."""
    groups = [{**saved, **{k: mine[k] for k in ("fused", "foreach") if k in mine}}
              for saved, mine in zip(state["param_groups"], optimizer.param_groups)]
    return {**state, "param_groups": groups}


def critic_loss(D: Discriminator, tokens: torch.Tensor, labels: torch.Tensor, gp_weight: float):
    """The Wasserstein critic's loss on a batch of real (label 1) and generated (label 0) sequences, and its
    logits: mean score(generated) - mean score(real) + gp_weight * (|grad score| - 1)^2 at random interpolations
    of paired real and generated embeddings (WGAN-GP), plus the original's L2 term on the output layer."""
    logits = D(tokens).float()
    score = Discriminator.reward_of(logits, critic=True)
    real, fake = labels == 1, labels == 0
    loss = ((score * fake).sum() / fake.sum().clamp(min=1) - (score * real).sum() / real.sum().clamp(min=1)
            + D.l2_reg * D.l2_penalty())
    pairs = int(min(real.sum(), fake.sum()))
    if gp_weight > 0 and pairs > 0:
        with torch.no_grad():
            ends = D.embedding(tokens[real][:pairs]), D.embedding(tokens[fake][:pairs])
        alpha = torch.rand(pairs, 1, 1, device=tokens.device)
        mixed = (alpha * ends[0] + (1 - alpha) * ends[1]).requires_grad_(True)
        with plain_kernels():  # the penalty differentiates a gradient
            mixed_score = Discriminator.reward_of(D.classify(D.embedded_features(mixed)), critic=True)
            [grad] = torch.autograd.grad(mixed_score.sum(), mixed, create_graph=True)
        loss = loss + gp_weight * (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
    return loss, logits


def on_cpu(data):
    """``data`` (dicts, lists, tensors) with every tensor on the CPU: a checkpoint made on a GPU then opens with
    a plain ``torch.load`` on a machine without one."""
    if isinstance(data, torch.Tensor):
        return data.cpu()
    if isinstance(data, dict):  # state dicts are OrderedDicts with module versions in ``_metadata``: kept
        moved = type(data)((key, on_cpu(value)) for key, value in data.items())
        if hasattr(data, "_metadata"):
            moved._metadata = data._metadata
        return moved
    if isinstance(data, (list, tuple)):
        return type(data)(on_cpu(value) for value in data)
    return data


def mean_on_host(values: list[torch.Tensor]) -> float:
    """The mean of per-batch scalars kept on the device, read back once: a read per batch (``loss.item()``)
    would make the CPU wait for a GPU at every batch. Summed in float64."""
    return torch.stack(values).cpu().double().sum().item() / len(values) if values else 0.0


class Trainer:
    """Runs the schedule of a ``TrainConfig`` on ``train_data`` ([N, seq_len] token ids).

    ``dist``: this process's place among the ranks of a torchrun launch (``setup_from_env``); the default is
    one process. Every rank builds a Trainer with the same arguments; only rank 0 evaluates, calls
    ``callback`` and writes into ``run_dir``.

    ``heldout``: real sequences kept out of training. With them, each evaluation in the adversarial phase of a run
    whose rewards come from the discriminator also reports its mean reward (P(real); a critic's score) for up
    to 2,000 training positives (``d_train_real``), as many held-out ones (``d_heldout_real``) and as many fresh
    samples of G (``d_generated``): a discriminator that has learned its training set rather than the data
    scores the held-out sequences about as low as the generated ones.
    """

    def __init__(self, config: TrainConfig, train_data: torch.Tensor, run_dir: str | RunDir | None = None,
                 evaluate: Evaluator | None = None, callback: Callable[[dict], None] | None = None,
                 reward_fn: RewardFn | None = None, kind: str = "tokens", tokenizer: bytes | None = None,
                 extra: dict | None = None, dist: DistContext = SINGLE, heldout: torch.Tensor | None = None):
        self.config = config.validate()
        self.dist = dist
        self.device = dist.device if dist.distributed else resolve_device(config.device)
        if config.d_precision == "bf16" and not bf16_capable(self.device):
            raise ConfigError(f"d_precision bf16: this GPU ({torch.cuda.get_device_name(self.device)}) has no "
                              f"native bfloat16 (it needs compute capability 8.0, Ampere, or later); use fp32")
        check_token_ids("training data", train_data, config)
        if len(train_data) == 0:
            raise ConfigError("training data is empty")
        if config.reward == "bleu" and reward_fn is None:
            raise ConfigError("reward 'bleu' needs a reward function (PG-BLEU is set up by the oracle experiment)")
        if min(config.batch_size, config.num_negatives, len(train_data)) < dist.world_size:
            raise ConfigError(f"{dist.world_size} ranks need at least one sequence per rank in batch_size "
                              f"({config.batch_size}), num_negatives ({config.num_negatives}) and the training "
                              f"data ({len(train_data)})")
        self.data = train_data.to(self.device)
        if heldout is not None:
            check_token_ids("held-out data", heldout, config)
        self.heldout = heldout[:D_SCORED].to(self.device) if heldout is not None and len(heldout) else None
        if run_dir is not None and not isinstance(run_dir, RunDir):
            run_dir = RunDir(run_dir)
        self.run_dir = run_dir.create().claim() if run_dir is not None and dist.is_main else None
        self.evaluate_fn, self.callback = evaluate, (callback if dist.is_main else None)
        self.kind, self.tokenizer, self.extra = kind, tokenizer, dict(extra or {})
        self.schedule = config.units()
        self.phase_units = Counter(phase for phase, _ in self.schedule)
        self.unit = 0  # next unit to run
        self.stop_requested = False
        self.peak_flops = None  # the device's measured fp32 matmul rate (``flops.matmul_peak``), at ``run``
        self.evaluation_seconds = 0.0  # time in ``evaluate`` during the current unit (left out of its ``mfu``)
        self.last_checkpoint_time = time.monotonic()

        torch.manual_seed(config.seed)
        c = config
        self.generator = Generator(c.vocab_size, c.g_emb_dim, c.g_hidden_dim, c.start_token).to(self.device)
        self.discriminator = Discriminator(c.vocab_size, c.seq_len, c.d_emb_dim, c.d_filter_sizes, c.d_num_filters,
                                           c.d_dropout_keep, c.d_l2).to(self.device)
        self.optimizers = {
            "mle": adam(self.generator.parameters(), lr=c.mle_lr),
            "pg": adam(self.generator.parameters(), lr=c.pg_lr),
            "d": adam(self.discriminator.parameters(), lr=c.d_lr),
        }
        self._adam_steps = {}  # updates each optimizer has made (``_adam_step``)
        self.d_autocast = partial(bf16_autocast, self.device.type, c.d_precision == "bf16")
        self.d_reward = discriminator_reward(self.discriminator, critic=c.critic == "wasserstein",
                                             bf16=c.d_precision == "bf16")
        self.reward_fn = reward_fn or self.d_reward
        # Losses that get a gradient are computed through these (under DDP on several ranks, see distributed.py).
        self.g_objective = dist.wrap(Objective(self.generator))
        self.d_objective = dist.wrap(Objective(self.discriminator))
        self.shared_rng = None  # one process: the default random stream serves everything
        if dist.distributed:
            self.shared_rng = torch.Generator(device=self.device)
            self.shared_rng.set_state(torch.cuda.get_rng_state(self.device) if self.device.type == "cuda"
                                      else torch.get_rng_state())
            self._seed_own_stream()

    # ----- state -------------------------------------------------------------------------------------------
    def bundle(self, role: str) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.shared_rng is not None:  # several ranks: the shared stream stands for a single process's stream
            rng["cuda" if self.device.type == "cuda" else "torch"] = self.shared_rng.get_state()
        return on_cpu({
            "format": FORMAT, "kind": self.kind, "role": role, "config": self.config.to_dict(),
            "position": {"unit": self.unit, "total": len(self.schedule)},
            "generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "rng": rng, "tokenizer": tokenizer_tensor(self.tokenizer), "extra": self.extra,
        })

    def restore(self, bundle: dict, position: int | None = None, weights_only: bool = False,
                name: str = "checkpoint") -> None:
        """Continue from a bundle (``name``: its file, for errors). ``weights_only`` takes only the networks (to
        branch a new schedule off it)."""
        missing = [key for key in (*TRAINING_ONLY, "position") if key not in bundle and not weights_only]
        if missing:
            raise InputError(name, f"has no {', '.join(missing)}: a slim (exported) checkpoint samples but cannot "
                                   "continue training")
        if "upgraded_from" in bundle:
            raise ConfigError(f"this checkpoint was made by an earlier version ({bundle['upgraded_from']}), whose "
                              f"networks differ from the original's (README, Faithfulness): it samples and "
                              f"scores, but training cannot continue it; start a new run")
        self.generator.load_state_dict(bundle["generator"])
        if "discriminator" in bundle:
            self.discriminator.load_state_dict(bundle["discriminator"])
        self.unit = bundle["position"]["unit"] if position is None else position
        if not weights_only:
            for name, opt in self.optimizers.items():
                opt.load_state_dict(_with_implementation_of(opt, bundle["optimizers"][name]))
            self._adam_steps = {}  # read afresh from the loaded states
            if self.shared_rng is None:
                torch.set_rng_state(bundle["rng"]["torch"])
                if self.device.type == "cuda" and "cuda" in bundle["rng"]:
                    torch.cuda.set_rng_state(bundle["rng"]["cuda"], self.device)
            else:  # the saved stream becomes the shared one; each rank's own stream starts afresh
                key = "cuda" if self.device.type == "cuda" else "torch"
                if key in bundle["rng"]:
                    self.shared_rng.set_state(bundle["rng"][key])
                self._seed_own_stream()
        if self.run_dir is not None:
            self.run_dir.truncate_events(self.unit)

    def save(self, role: str = "latest") -> None:
        if self.run_dir is not None:
            save_bundle(self.bundle(role), self.run_dir.checkpoint(role))
            self.last_checkpoint_time = time.monotonic()

    def request_stop(self) -> None:
        """Finish the unit in progress, checkpoint and return (``STOP`` does the same for every trainer of the
        process: the CLI sets it on SIGTERM or Ctrl-C)."""
        self.stop_requested = True

    def _seed_own_stream(self) -> None:
        """Several ranks: this rank's own stream (samples, roll-outs, dropout) is seeded with seed + rank at the
        start, and afresh on resume, so that a resumed run does not repeat the random numbers of its start."""
        torch.manual_seed(self.config.seed + self.dist.rank + 1_000_003 * self.unit)

    # ----- the pieces of the schedule ---------------------------------------------------------------------
    def _step(self, optimizer, loss, clip_parameters=None, scale: float = 1.0):
        """One update. ``scale`` multiplies this rank's gradient before DDP averages it (see distributed.py)."""
        optimizer.zero_grad(set_to_none=True)
        (loss if scale == 1.0 else loss * scale).backward()
        if clip_parameters is not None:
            torch.nn.utils.clip_grad_norm_(clip_parameters, self.config.grad_clip)
        if self.config.adam_epsilon == "tf1":
            tf1_adam_epsilon(optimizer, self._adam_step(optimizer))
        optimizer.step()

    def _adam_step(self, optimizer) -> int:
        """The number of the update ``optimizer`` is about to make (1, 2, ...), counted here after it is read once
        from the optimizer's state (where it is a tensor: on a GPU every read would wait for the device)."""
        done = self._adam_steps.get(id(optimizer))
        if done is None:
            done = max((int(state["step"]) for state in optimizer.state.values() if "step" in state), default=0)
        self._adam_steps[id(optimizer)] = done + 1
        return done + 1

    def _batches(self, n: int, batch_size: int, generator: torch.Generator | None = None):
        """Shuffled full batches (the original drops the last partial one); one batch if n < batch_size."""
        order = torch.randperm(n, device=self.device, generator=generator)
        size = min(batch_size, n)
        return [order[i:i + size] for i in range(0, n - size + 1, size)]

    def mle_batches(self) -> list[torch.Tensor]:
        """An MLE epoch's batches of row indices. ``mle_order="fixed"``: the same every epoch, in an order drawn
        from the seed (the original reads its training file in order every epoch; for the oracle task that file
        is i.i.d. samples, so a seeded order is the same schedule, and a sorted corpus cannot bias it).
        ``"reshuffle"``: a new order every epoch, from the training stream."""
        c = self.config
        if c.mle_order == "fixed":
            generator = torch.Generator(device=self.device).manual_seed(c.seed)
        else:
            generator = self.shared_rng
        return self._batches(len(self.data), c.batch_size, generator)

    def mle_epoch(self, index: int) -> dict:
        c, G, dist = self.config, self.generator, self.dist
        G.train()
        own_prob = c.scheduled_sampling * index / max(1, c.mle_epochs - 1)
        losses = []
        for idx in self.mle_batches():
            mine = dist.shard(idx)  # every rank has the same global batch and takes its part
            share = len(mine) / len(idx)
            batch = self.data[mine]
            if c.scheduled_sampling > 0:
                loss = self.g_objective(scheduled_sampling_nll, batch, own_prob)
            else:
                loss = self.g_objective(Generator.nll, batch)
            self._step(self.optimizers["mle"], loss, G.parameters(), share * dist.world_size)
            losses.append(loss.detach() * share)
        [mle_loss] = dist.sum(mean_on_host(losses))
        event = {"mle_loss": mle_loss}
        if c.scheduled_sampling > 0:
            event["own_token_prob"] = own_prob
        return event

    def discriminator_round(self) -> dict:
        """Fresh negatives from G, then d_epochs epochs of D over positives + negatives."""
        c, D, dist = self.config, self.discriminator, self.dist
        negatives = self.generator.sample(dist.per_rank(c.num_negatives), c.seq_len)
        positives = self.data
        if len(positives) > c.num_negatives:  # a large corpus: as many positives as negatives, drawn afresh
            order = torch.randperm(len(positives), device=self.device, generator=self.shared_rng)
            positives = positives[order[:c.num_negatives]]
        positives = dist.equal_shard(positives)  # equal counts: every rank must run the same number of batches
        tokens = torch.cat([positives, negatives])
        labels = torch.cat([torch.ones(len(positives), dtype=torch.long, device=self.device),
                            torch.zeros(len(negatives), dtype=torch.long, device=self.device)])
        D.train()
        critic = c.critic == "wasserstein"
        losses, correct, seen = [], [], 0
        score_sums = torch.zeros(2, 2, device=self.device)  # critic: [generated, real] x [sum of scores, count]
        batches = self._batches(len(tokens), dist.per_rank(c.d_batch_size))  # shuffled once: the original's
        for _ in range(c.d_epochs):                                          # epochs repeat one batch order
            for idx in batches:
                with self.d_autocast():
                    if critic:
                        loss, logits = self.d_objective(critic_loss, tokens[idx], labels[idx], c.gp_weight)
                    else:
                        loss, logits = self.d_objective(discriminator_loss, tokens[idx], labels[idx])
                if critic:
                    scores = Discriminator.reward_of(logits.detach(), critic=True)
                    score_sums.index_add_(0, labels[idx], torch.stack([scores, torch.ones_like(scores)], dim=1))
                self._step(self.optimizers["d"], loss)  # the original trains D with plain Adam, no clipping
                losses.append(loss.detach())
                correct.append((logits.detach().argmax(1) == labels[idx]).sum())
                seen += len(idx)
        event = {"d_loss": dist.mean(mean_on_host(losses))}
        # A critic's accuracy (the sign of its score) means little: its loss does not anchor the score at 0.
        # Its Wasserstein estimate, mean score of real minus generated sequences, is what it learns.
        if critic:
            fake_sum, fake_count, real_sum, real_count = dist.sum(*score_sums.flatten().tolist())
            event["d_gap"] = real_sum / max(1.0, real_count) - fake_sum / max(1.0, fake_count)
        correct, seen = dist.sum(int(torch.stack(correct).sum()) if correct else 0, seen)
        return {**event, "d_acc": correct / max(1, seen)}

    def generator_pg_step(self) -> dict:
        c, G, dist = self.config, self.generator, self.dist
        samples = G.sample(dist.shard_size(c.batch_size), c.seq_len)  # each rank rolls out its part of the batch
        rewards = rollout_rewards(G, samples, c.rollouts, self.reward_fn)
        raw_mean = rewards.mean().item()
        if c.baseline == "mean" or c.reward_norm == "std":  # statistics at each step over the whole (global) batch
            rewards = self._standardize(rewards, divide=c.reward_norm == "std")
        G.train()
        # -sum over batch and time of log G(y_t | Y_1:t-1) * Q_t: a sum over the global batch, so the gradient DDP
        # averages over ranks is multiplied by the number of ranks.
        loss = self.g_objective(Generator.weighted_nll, samples, rewards)
        self._step(self.optimizers["pg"], loss, G.parameters(), dist.world_size)
        share = len(samples) / c.batch_size
        pg_loss, reward_mean = dist.sum(loss.item(), raw_mean * share)
        return {"pg_loss": pg_loss, "reward_mean": reward_mean}

    def _standardize(self, rewards: torch.Tensor, divide: bool) -> torch.Tensor:
        """Rewards [B, T] minus their mean at each step over the global batch; ``divide``: also divided by the
        standard deviation at each step (reward normalisation)."""
        def global_sum(x):
            return self.dist.sum_tensor(x) if self.dist.distributed else x

        centred = rewards - global_sum(rewards.sum(dim=0)) / self.config.batch_size
        if not divide:
            return centred
        sd = (global_sum(centred.pow(2).sum(dim=0)) / self.config.batch_size).sqrt()
        return centred / torch.where(sd > 1e-6, sd, 1.0)  # a step without spread (all equal) stays at 0

    def adversarial_iteration(self, evaluate_as: str | None = None) -> dict:
        """The generator's steps, then (``evaluate_as``: the evaluation's name) the evaluation, as the original
        evaluates there, so its discriminator scores are of the D that gave these steps' rewards; then D's rounds."""
        c = self.config
        event = {}
        for _ in range(c.g_steps):
            event.update(self.generator_pg_step())
        if evaluate_as is not None:
            event.update(self.evaluate(evaluate_as, adversarial=True))
        if c.reward == "discriminator":
            for _ in range(c.d_steps):
                event.update(self.discriminator_round())
        return event

    # ----- the loop ----------------------------------------------------------------------------------------
    def evaluate(self, name: str, adversarial: bool = False) -> dict:
        """Metrics of the generator now, and a few of its samples in ``samples/<name>.txt``; ``adversarial``: also
        ``discriminator_scores`` (with held-out data, when D gives the rewards)."""
        if not self.dist.is_main:  # rank 0 evaluates; the others wait for it at the end of the unit
            return {}
        started = time.perf_counter()
        try:
            return self._evaluate(name, adversarial)
        finally:
            self.evaluation_seconds += time.perf_counter() - started

    def _evaluate(self, name: str, adversarial: bool) -> dict:
        rng = torch.Generator(device=self.device).manual_seed(self.config.seed * 1_000_003 + self.unit)
        self.generator.eval()
        if self.run_dir is not None:
            write_token_file(self.generator.sample(SAMPLES_KEPT, self.config.seq_len, generator=rng),
                             self.run_dir.samples / f"{name}.txt")
        metrics = {}
        with torch.no_grad():
            if self.evaluate_fn is not None:
                metrics.update(self.evaluate_fn(self.generator, rng))
            if adversarial and self.heldout is not None and self.config.reward == "discriminator":
                metrics.update(self.discriminator_scores(rng))  # after the evaluator: its samples stay the same
        return metrics

    def discriminator_scores(self, rng: torch.Generator) -> dict:
        """D's mean reward for training positives, held-out real sequences and fresh samples (see the class)."""
        n = len(self.heldout)
        generated = self.generator.sample(n, self.config.seq_len, generator=rng)
        scored = {"d_train_real": self.data[:n], "d_heldout_real": self.heldout, "d_generated": generated}
        return {name: float(self.d_reward(tokens).float().mean()) for name, tokens in scored.items()}

    def emit(self, event: dict) -> None:
        event = {"time": time.time(), **event}
        if self.run_dir is not None:
            self.run_dir.append_event(event)
        if self.callback is not None:
            self.callback(event)

    def _status(self, state: str, **fields) -> None:
        if self.run_dir is not None:
            phase, index = self.schedule[min(self.unit, len(self.schedule) - 1)] if self.schedule else ("done", 0)
            device = self.device.type if self.device.type != "cuda" else \
                f"cuda:{torch.cuda.current_device() if self.device.index is None else self.device.index}"
            self.run_dir.update_status(state=state, unit=self.unit, units=len(self.schedule), phase=phase,
                                       step=index, device=device, devices=self.dist.node_devices(device), **fields)

    def run(self) -> str:
        """Run from the current position to the end (or a stop request). Returns 'finished' or 'stopped'."""
        c = self.config
        if self.peak_flops is None:
            self.peak_flops = flops.matmul_peak(self.device)
        self._status("running", peak_flops=self.peak_flops * self.dist.world_size, train_sequences=len(self.data))
        if self.unit == 0:
            self.emit({"unit": -1, "phase": "init", "step": 0, "total": 0, **self.evaluate("init")})
        while self.unit < len(self.schedule):
            phase, index = self.schedule[self.unit]
            started = time.perf_counter()
            self.evaluation_seconds = 0.0
            total = self.phase_units[phase]
            last_of_phase = index == total - 1
            evaluation = f"{phase}-{index + 1:04d}" \
                if phase != "d_pretrain" and (index % c.eval_every == 0 or last_of_phase) else None
            if phase == "mle":
                event = self.mle_epoch(index)
            elif phase == "d_pretrain":
                event = self.discriminator_round()
            else:
                event = self.adversarial_iteration(evaluation)
            if evaluation is not None and phase == "mle":
                event.update(self.evaluate(evaluation))
            self.unit += 1
            seconds = time.perf_counter() - started
            working = seconds - self.evaluation_seconds
            if working > 0:
                event["mfu"] = flops.unit(c, phase, len(self.data)) / (working * self.peak_flops * self.dist.world_size)
            self.emit({"unit": self.unit - 1, "phase": phase, "step": index + 1, "total": total,
                       "seconds": seconds, **event})
            if last_of_phase and phase == "mle":
                self.save("mle")
            if last_of_phase and phase == "adversarial":
                self.save("seqgan")
            if last_of_phase or time.monotonic() - self.last_checkpoint_time >= c.checkpoint_seconds:
                self.save("latest")
            self._status("running")
            # A stop request on any rank (SIGTERM reaches each separately) stops every rank after this unit.
            if self.dist.any(self.stop_requested or STOP.is_set()) and self.unit < len(self.schedule):
                self.save("latest")
                self._status("stopped")
                self.dist.barrier()
                return "stopped"
        self.save("latest")
        self._status("finished")
        self.dist.barrier()  # the other ranks wait for rank 0's last checkpoint
        return "finished"


def run_to_end(trainer: Trainer, begin: Callable[[Trainer], None] | None = None,
               log: Callable[[str], None] | None = None, label: str = "") -> str:
    """Train into ``trainer.run_dir`` to the end of its schedule, picking up an earlier attempt there.

    Finished before: nothing to do. Begun (it has ``latest.pt``): continue from that checkpoint. Either way the
    run there must have the same configuration (a clear error otherwise). New: ``begin(trainer)`` first when
    given (to branch off another run's state), then the whole schedule. The experiments and studies run every
    model through this, so that an interrupted experiment, run again with the same output folder, keeps what
    finished and resumes the rest. Raises ``Stopped`` when a stop was requested (``STOP``) before the end,
    also before it starts. One process only (on several ranks only rank 0 has the run directory).
    """
    run = trainer.run_dir
    assert run is not None, "run_to_end needs a trainer with a run directory (one process)"
    latest = run.checkpoint("latest")
    bundle = load_bundle(latest) if latest.exists() else None
    if bundle is not None:
        differ = settings_differ(trainer.config, bundle["config"])
        if differ:
            raise ConfigError(f"{run.path} holds a run with other settings ({', '.join(differ)}); use another "
                              f"output folder or remove it (in an experiment the preset, the options and "
                              f"--models decide what each run trains)")
    if run.finished():
        return "finished"
    if STOP.is_set():
        raise Stopped(f"{run.path} not started; the same command run again continues from there")
    if bundle is not None:
        trainer.restore(bundle, name=str(latest))
    else:
        run.truncate_events(-1)  # an attempt that died before its first checkpoint leaves no events behind
        if begin is not None:
            begin(trainer)
    if log is not None:
        log(f"{label}: units {trainer.unit}..{len(trainer.schedule)}")
    if trainer.run() == "stopped":
        raise Stopped(f"{run.path} at unit {trainer.unit} of {len(trainer.schedule)}, latest.pt saved; the same "
                      f"command run again continues from there")
    return "finished"

