"""Does our discriminator train as the original's TensorFlow one does? Both trained on identical inputs.

``prep`` takes a seed folder of ``seqgan oracle run`` (its ``train.txt``, ``heldout.txt`` and MLE generator
``seqgan/checkpoints/mle.pt``) and writes: the 10,000 positives; for each of R rounds 10,000 negatives sampled
from the MLE generator; 2,000 more negatives for evaluation; each round's batch order; the initial weights of a
paper-sized discriminator. ``ours`` and ``tensorflow`` then train R rounds of 3 epochs (batch 64, dropout keep
0.75, L2 0.2 on the output layer, Adam 1e-4; ours with ``--adam-epsilon tf1``, the default, or ``torch``) from
those weights in that order, so only the dropout masks and the arithmetic differ, and print after each round
the mean training loss and accuracy and the mean P(real) of 2,000 training positives, of the run's held-out
oracle samples and of the evaluation negatives. ``table`` prints both side by side.

The TensorFlow side rebuilds the original's discriminator.py (LantaoYu/SeqGAN) in tf.compat.v1 graph mode:
conv2d VALID over the [20, 64, 1] embedded image per width, ReLU, max_pool over time, the highway with gate bias
0, dropout, the output layer with l2_loss(W) + l2_loss(b), softmax cross-entropy, Adam 1e-4 with
aggregation_method=2. It needs TensorFlow, in an environment of its own (it imports neither torch nor seqgan):

    python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu
    python benchmarks/discriminator_vs_tensorflow.py prep --run results/oracle-paper/seed1 --rounds 10
    OMP_NUM_THREADS=1 python benchmarks/discriminator_vs_tensorflow.py ours
    TF_ENABLE_ONEDNN_OPTS=0 /tmp/tfenv/bin/python benchmarks/discriminator_vs_tensorflow.py tensorflow
    python benchmarks/discriminator_vs_tensorflow.py table

(TensorFlow 2.21's oneDNN path took 0.8 s a batch on one core here, its Eigen path 0.09 s.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

WIDTHS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20]
SEQ_LEN, VOCAB, EVALUATED = 20, 5000, 2000
COLUMNS = ("d_loss", "d_acc", "p_real_train_pos", "p_real_heldout", "p_real_fresh_neg")


def prep(run: Path, rounds: int, work: Path):
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from seqgan.checkpoint import load_bundle
    from seqgan.models import Discriminator, Generator

    torch.set_num_threads(1)
    positives = np.loadtxt(run / "train.txt", dtype=np.int64)
    heldout = np.loadtxt(run / "heldout.txt", dtype=np.int64)
    generator = Generator(VOCAB)
    generator.load_state_dict(load_bundle(run / "seqgan" / "checkpoints" / "mle.pt")["generator"])
    rng = torch.Generator().manual_seed(123)
    negatives = np.stack([generator.eval().sample(len(positives), SEQ_LEN, generator=rng).numpy()
                          for _ in range(rounds)])
    fresh = generator.sample(EVALUATED, SEQ_LEN, generator=rng).numpy()
    order_rng = np.random.default_rng(7)
    total = 2 * len(positives)
    orders = np.stack([order_rng.permutation(total)[:total // 64 * 64].reshape(-1, 64) for _ in range(rounds)])
    torch.manual_seed(11)
    init = {k: v.numpy() for k, v in Discriminator(VOCAB, SEQ_LEN).state_dict().items()}
    work.mkdir(parents=True, exist_ok=True)
    np.savez(work / "data.npz", positives=positives, heldout=heldout, negatives=negatives, fresh=fresh,
             orders=orders)
    np.savez(work / "init.npz", **init)
    print(f"{rounds} rounds of {len(positives)} + {len(positives)} sequences written to {work}")


def train_rounds(step, p_real, data, out: Path):
    """Round after round: 3 epochs of ``step(tokens, labels) -> (loss, correct)``, then the P(real) means."""
    positives = data["positives"]
    labels = np.concatenate([np.ones(len(positives), np.int64), np.zeros(len(positives), np.int64)])
    with open(out, "w") as log:
        for r, (negatives, order) in enumerate(zip(data["negatives"], data["orders"])):
            tokens = np.concatenate([positives, negatives])
            start, losses, correct = time.time(), [], 0
            for _ in range(3):
                for idx in order:
                    loss, right = step(tokens[idx], labels[idx])
                    losses.append(loss)
                    correct += right
            row = {"round": r + 1, "d_loss": float(np.mean(losses)), "d_acc": correct / (3 * order.size),
                   "seconds": time.time() - start, "p_real_train_pos": p_real(positives[:EVALUATED]),
                   "p_real_heldout": p_real(data["heldout"]), "p_real_fresh_neg": p_real(data["fresh"])}
            print(json.dumps(row), file=log, flush=True)
            print(" ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)


def ours(work: Path, adam_epsilon: str):
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from seqgan import cli, train
    from seqgan.models import Discriminator

    cli.keep_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(5)
    init = np.load(work / "init.npz")
    D = Discriminator(VOCAB, SEQ_LEN)
    D.load_state_dict({k: torch.from_numpy(init[k]) for k in init.files})
    optimizer = train.adam(D.parameters(), 1e-4)
    steps = 0

    def step(tokens, labels):
        nonlocal steps
        D.train()
        labels = torch.from_numpy(labels)
        loss, logits = train.discriminator_loss(D, torch.from_numpy(tokens), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        steps += 1
        if adam_epsilon == "tf1":
            train.tf1_adam_epsilon(optimizer, steps)
        optimizer.step()
        return loss.item(), int((logits.argmax(1) == labels).sum())

    def p_real(tokens):
        D.eval()
        with torch.no_grad():
            return float(D.prob_real(torch.from_numpy(tokens)).mean())

    train_rounds(step, p_real, np.load(work / "data.npz"), work / f"ours-{adam_epsilon}.jsonl")


def tensorflow(work: Path):
    import tensorflow as tf
    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    tf1.set_random_seed(5)
    init = np.load(work / "init.npz")
    x_in = tf1.placeholder(tf.int32, [None, SEQ_LEN])
    y_in = tf1.placeholder(tf.float32, [None, 2])  # one-hot; class 1 is real, as in the original
    keep = tf1.placeholder(tf.float32)
    embedding = tf.Variable(init["embedding.weight"])
    image = tf.expand_dims(tf.nn.embedding_lookup(embedding, x_in), -1)  # [B, T, E, 1]
    pooled = []
    for i, width in enumerate(WIDTHS):
        kernel = tf.Variable(np.transpose(init[f"convs.{i}.weight"], (2, 1, 0))[:, :, None, :].copy())
        conv = tf.nn.conv2d(image, kernel, strides=[1, 1, 1, 1], padding="VALID")
        relu = tf.nn.relu(tf.nn.bias_add(conv, tf.Variable(init[f"convs.{i}.bias"])))
        pooled.append(tf.nn.max_pool2d(relu, ksize=[1, SEQ_LEN - width + 1, 1, 1], strides=[1, 1, 1, 1],
                                       padding="VALID"))
    flat = tf.reshape(tf.concat(pooled, 3), [-1, sum(init[f"convs.{i}.bias"].size for i in range(len(WIDTHS)))])

    def linear(v, name):  # the original's linear(): matrix [out, in], v @ matrix^T + bias
        matrix = tf.Variable(init[f"highway.{name}.weight"])
        return tf.matmul(v, tf.transpose(matrix)) + tf.Variable(init[f"highway.{name}.bias"])

    gate = tf.sigmoid(linear(flat, "gate") + 0.0)
    highway = gate * tf.nn.relu(linear(flat, "transform")) + (1.0 - gate) * flat
    W = tf.Variable(init["output.weight"].T.copy())
    b = tf.Variable(init["output.bias"])
    scores = tf1.nn.xw_plus_b(tf.nn.dropout(highway, rate=1.0 - keep), W, b)
    probs = tf.nn.softmax(scores)
    loss = (tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(logits=scores, labels=y_in))
            + 0.2 * (tf.nn.l2_loss(W) + tf.nn.l2_loss(b)))
    correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(scores, 1), tf.argmax(y_in, 1)), tf.int32))
    optimizer = tf1.train.AdamOptimizer(1e-4)
    train_op = optimizer.apply_gradients(
        optimizer.compute_gradients(loss, tf1.trainable_variables(), aggregation_method=2))
    session = tf1.Session(config=tf1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1))
    session.run(tf1.global_variables_initializer())

    def step(tokens, labels):
        _, value, right = session.run([train_op, loss, correct],
                                      {x_in: tokens, y_in: np.eye(2, dtype=np.float32)[labels], keep: 0.75})
        return float(value), int(right)

    def p_real(tokens):
        return float(session.run(probs, {x_in: tokens, keep: 1.0})[:, 1].mean())

    train_rounds(step, p_real, np.load(work / "data.npz"), work / "tensorflow.jsonl")


def table(work: Path, adam_epsilon: str):
    sides = {name: [json.loads(line) for line in open(work / f"{name}.jsonl")]
             for name in (f"ours-{adam_epsilon}", "tensorflow")}
    print("| round | " + " | ".join(f"{c} ours / TF" for c in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for a, b in zip(*sides.values()):
        print(f"| {a['round']} | " + " | ".join(f"{a[c]:.3f} / {b[c]:.3f}" for c in COLUMNS) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("prep", "ours", "tensorflow", "table"))
    parser.add_argument("--run", type=Path, help="prep: a seed folder of `seqgan oracle run`")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--adam-epsilon", choices=("tf1", "torch"), default="tf1", help="ours, table: Adam's epsilon")
    parser.add_argument("--work", type=Path, default=Path("/tmp/discriminator-vs-tensorflow"))
    args = parser.parse_args()
    if args.what == "prep":
        if args.run is None:
            parser.error("prep needs --run")
        prep(args.run, args.rounds, args.work)
    elif args.what == "tensorflow":
        tensorflow(args.work)
    else:
        {"ours": ours, "table": table}[args.what](args.work, args.adam_epsilon)


if __name__ == "__main__":
    main()
