"""Does our generator's update equal the original's TensorFlow one? Both from the same weights on the same inputs.

``prep`` writes the initial weights of a paper-sized generator (vocabulary 5,000, embedding and LSTM 32) and the
inputs of a few updates: MLE batches of 64 sequences of 20 tokens, then policy-gradient batches with rewards in
[0, 0.01] (the size of the paper run's rewards). ``ours`` makes the updates as ``Trainer`` does (the MLE loss with
its Adam, then the policy-gradient loss -sum log G * Q with a second Adam, each with a global-norm clip of 5), with
``--adam-epsilon tf1`` (the default, ``train.tf1_adam_epsilon``) or ``torch``;
``tensorflow`` makes them with the original's generator.py rebuilt in tf.compat.v1 graph mode (its LSTM
equations, the losses with probabilities clipped at 1e-20, clip_by_global_norm 5, two AdamOptimizers of 0.01).
There is no randomness in an update, so ``compare`` prints, for every step, both losses, and for every weight how
far the updates moved it and how far ours ended from TensorFlow's (as norms over the weight's entries). The one
difference torch's Adam would make is where it adds epsilon: to the bias-corrected sqrt(v), where TensorFlow 1
adds it before the correction, which damps the first steps of entries with small gradients (README,
"Faithfulness"); ``TrainConfig.adam_epsilon`` chooses, the original's placement by default.

    python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu
    python benchmarks/generator_vs_tensorflow.py prep
    OMP_NUM_THREADS=1 python benchmarks/generator_vs_tensorflow.py ours
    OMP_NUM_THREADS=1 python benchmarks/generator_vs_tensorflow.py ours --adam-epsilon torch
    TF_ENABLE_ONEDNN_OPTS=0 /tmp/tfenv/bin/python benchmarks/generator_vs_tensorflow.py tensorflow
    python benchmarks/generator_vs_tensorflow.py compare
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

VOCAB, EMB, HIDDEN, SEQ_LEN, BATCH = 5000, 32, 32, 20, 64
GATES = ("i", "f", "c", "o")  # torch's LSTM rows: input, forget, cell candidate, output
ORIGINAL = {"i": ("Wi", "Ui", "bi"), "f": ("Wf", "Uf", "bf"), "c": ("Wc", "Uc", "bc"), "o": ("Wog", "Uog", "bog")}


def to_original(state: dict) -> dict:
    """Our generator's weights under the original's names and layouts (x @ W, h @ U, h @ Wo)."""
    out = {"g_embeddings": state["embedding.weight"], "Wo": state["output.weight"].T.copy(),
           "bo": state["output.bias"]}
    for k, gate in enumerate(GATES):
        rows = slice(k * HIDDEN, (k + 1) * HIDDEN)
        W, U, b = ORIGINAL[gate]
        out[W] = state["lstm.weight_ih_l0"][rows].T.copy()
        out[U] = state["lstm.weight_hh_l0"][rows].T.copy()
        out[b] = state["lstm.bias_ih_l0"][rows] + state["lstm.bias_hh_l0"][rows]
    return out


def prep(work: Path, mle_steps: int, pg_steps: int):
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from seqgan.models import Generator

    torch.manual_seed(3)
    state = {k: v.numpy() for k, v in Generator(VOCAB, EMB, HIDDEN).state_dict().items()}
    rng = np.random.default_rng(5)
    work.mkdir(parents=True, exist_ok=True)
    np.savez(work / "inputs.npz", mle=rng.integers(0, VOCAB, (mle_steps, BATCH, SEQ_LEN)),
             pg=rng.integers(0, VOCAB, (pg_steps, BATCH, SEQ_LEN)),
             rewards=rng.uniform(0, 0.01, (pg_steps, BATCH, SEQ_LEN)).astype(np.float32))
    np.savez(work / "init.npz", **state)
    print(f"{mle_steps} MLE and {pg_steps} policy-gradient steps written to {work}")


def ours(work: Path, adam_epsilon: str):
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from seqgan import train
    from seqgan.models import Generator

    torch.set_num_threads(1)
    init, inputs = np.load(work / "init.npz"), np.load(work / "inputs.npz")
    G = Generator(VOCAB, EMB, HIDDEN)
    G.load_state_dict({k: torch.from_numpy(init[k]) for k in init.files})
    mle_opt, pg_opt = train.adam(G.parameters(), 0.01), train.adam(G.parameters(), 0.01)
    losses, steps = [], {}

    def step(optimizer, loss):  # Trainer._step
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(G.parameters(), 5.0)
        steps[id(optimizer)] = steps.get(id(optimizer), 0) + 1
        if adam_epsilon == "tf1":
            train.tf1_adam_epsilon(optimizer, steps[id(optimizer)])
        optimizer.step()
        losses.append(loss.item())

    for batch in inputs["mle"]:
        step(mle_opt, G.nll(torch.from_numpy(batch)))
    for batch, rewards in zip(inputs["pg"], inputs["rewards"]):
        step(pg_opt, G.weighted_nll(torch.from_numpy(batch), torch.from_numpy(rewards)))
    final = to_original({k: v.detach().numpy() for k, v in G.state_dict().items()})
    name = f"ours-{adam_epsilon}"
    np.savez(work / f"{name}.npz", **final)
    (work / f"{name}.json").write_text(json.dumps(losses))
    print("losses", losses)


def tensorflow(work: Path):
    import tensorflow as tf
    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    init, inputs = np.load(work / "init.npz"), np.load(work / "inputs.npz")
    start = to_original({k: init[k] for k in init.files})
    v = {name: tf.Variable(value) for name, value in start.items()}
    x = tf1.placeholder(tf.int32, [BATCH, SEQ_LEN])
    rewards = tf1.placeholder(tf.float32, [BATCH, SEQ_LEN])

    def unit(x_t, h, c):
        def gate(name, f):
            W, U, b = ORIGINAL[name]
            return f(tf.matmul(x_t, v[W]) + tf.matmul(h, v[U]) + v[b])
        i, f_, o, c_ = gate("i", tf.sigmoid), gate("f", tf.sigmoid), gate("o", tf.sigmoid), gate("c", tf.tanh)
        c = f_ * c + i * c_
        return o * tf.tanh(c), c

    # teacher forcing: the start token 0, then the sequence (a Python loop unrolls the original's while_loop)
    embedded = tf.nn.embedding_lookup(v["g_embeddings"], x)
    x_t = tf.nn.embedding_lookup(v["g_embeddings"], tf.zeros([BATCH], tf.int32))
    h = c = tf.zeros([BATCH, HIDDEN])
    predictions = []
    for t in range(SEQ_LEN):
        h, c = unit(x_t, h, c)
        predictions.append(tf.nn.softmax(tf.matmul(h, v["Wo"]) + v["bo"]))
        x_t = embedded[:, t]
    g_predictions = tf.reshape(tf.stack(predictions, axis=1), [-1, VOCAB])
    log_p = tf.reduce_sum(tf.one_hot(tf.reshape(x, [-1]), VOCAB, 1.0, 0.0)
                          * tf.math.log(tf.clip_by_value(g_predictions, 1e-20, 1.0)), 1)
    pretrain_loss = -tf.reduce_sum(log_p) / (SEQ_LEN * BATCH)
    g_loss = -tf.reduce_sum(log_p * tf.reshape(rewards, [-1]))
    params = list(v.values())

    def updates(loss):
        grads, _ = tf.clip_by_global_norm(tf.gradients(loss, params), 5.0)
        return tf1.train.AdamOptimizer(0.01).apply_gradients(zip(grads, params))

    pretrain_updates, g_updates = updates(pretrain_loss), updates(g_loss)
    session = tf1.Session(config=tf1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1))
    session.run(tf1.global_variables_initializer())
    losses = []
    for batch in inputs["mle"]:
        losses.append(float(session.run([pretrain_updates, pretrain_loss], {x: batch})[1]))
    for batch, reward in zip(inputs["pg"], inputs["rewards"]):
        losses.append(float(session.run([g_updates, g_loss], {x: batch, rewards: reward})[1]))
    np.savez(work / "tensorflow.npz", **session.run(v))
    (work / "tensorflow.json").write_text(json.dumps(losses))
    print("losses", losses)


def compare(work: Path):
    init = np.load(work / "init.npz")
    start = to_original({k: init[k] for k in init.files})
    runs = [name for name in ("ours-tf1", "ours-torch") if (work / f"{name}.npz").exists()]
    tf_weights, tf_losses = np.load(work / "tensorflow.npz"), json.loads((work / "tensorflow.json").read_text())
    losses = {name: json.loads((work / f"{name}.json").read_text()) for name in runs}
    print("step  loss (TF)      " + "  ".join(f"relative difference, {name}" for name in runs))
    for k, y in enumerate(tf_losses):
        print(f"{k + 1:4d}  {y:13.6f}  " + "  ".join(f"{abs(losses[name][k] - y) / abs(y):>{len(name) + 21}.1e}"
                                                 for name in runs))
    print("|a| is the L2 norm over a weight's entries; moved = TF's final weight - the initial one")
    print(f"{'weight':13s} {'|moved|':>9s}  " + "  ".join(f"{'|' + name + ' - TF| / |moved|':>30s}" for name in runs))
    weights = {name: np.load(work / f"{name}.npz") for name in runs}
    for w in start:
        moved = np.linalg.norm(tf_weights[w] - start[w])
        print(f"{w:13s} {moved:9.3e}  " + "  ".join(
            f"{np.linalg.norm(weights[name][w] - tf_weights[w]) / moved:30.1e}" for name in runs))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("prep", "ours", "tensorflow", "compare"))
    parser.add_argument("--mle-steps", type=int, default=5)
    parser.add_argument("--pg-steps", type=int, default=5)
    parser.add_argument("--adam-epsilon", choices=("tf1", "torch"), default="tf1", help="ours: Adam's epsilon")
    parser.add_argument("--work", type=Path, default=Path("/tmp/generator-vs-tensorflow"))
    args = parser.parse_args()
    if args.what == "prep":
        prep(args.work, args.mle_steps, args.pg_steps)
    elif args.what == "ours":
        ours(args.work, args.adam_epsilon)
    else:
        {"tensorflow": tensorflow, "compare": compare}[args.what](args.work)


if __name__ == "__main__":
    main()
