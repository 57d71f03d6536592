"""Why SGD at the reference code's learning rates diverges on our classifier: python bench/optimizer_scale.py

Our classifier is SN-GAN's discriminator trunk: residual blocks with no normalisation and a sum (not
a mean) over the last feature map's positions. The reference code of TRADES and of fast adversarial
training trains batch-normalised, average-pooled networks with SGD at 0.1 (CIFAR-10) or 0.01
(MNIST). For each learning rate this runs the first steps of several trainings from the same initial
weights on the same batches, and prints the step at which each loss first turns non-finite (or the
largest and the last step's loss):
  trades         our TRADES step through fit, with our SGD (momentum 0.9, L2 weight decay, cosine
                 schedule), at the full eps;
  trades-warmup  the same with eps ramping up over --eps-warmup-steps, as a study's first epochs do;
  clean          our PGD-AT step with eps's warm-up stretched so far that eps stays ~0: the clean
                 cross-entropy through our SGD path (weight decay and schedule included);
  plain          Keras' SGD with momentum 0.9 on the clean cross-entropy, written here: none of
                 robgan_tf's training code;
  plain-mean     the same, the classifier's summed features divided by the positions summed
                 (average pooling).
Where clean and plain agree, our SGD path does what Keras' does; where plain diverges and plain-mean
does not, the sum pooling's scale is why. Adam at the dataset's default rate is the last row, for
contrast. About eight minutes on 2 cores.
"""

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from machine import machine_info  # noqa: E402  (bench/, the script's directory)
from robgan_tf import data, losses, methods, models, trainer  # noqa: E402

SCHEDULE_STEPS = 2000  # the cosine schedule's length, about a short study's: its first steps run at the full rate
EPS_NEVER = 10 ** 9  # an eps warm-up this long keeps eps at ~1e-9 of its value: no attack to speak of


def run_config(dataset, method, optimizer, lr, args):
    """A row's settings: the study's classifier, `method`, SGD (or Adam) at `lr`."""
    sgd = dict(classifier_optimizer="sgd", momentum=0.9, weight_decay=args.weight_decay) if optimizer == "sgd" else {}
    return methods.config_for(dataset.name, method, {"d_lr": lr, "width": args.width, "augment": False,
                                                       "seed": args.seed, **sgd})


def some_batches(dataset, batch_size, steps, seed):
    """`steps` batches (float images in [0, 1], int labels) of training images drawn at random from the
    whole split (a data file may be sorted by class)."""
    pick = np.random.default_rng(seed).permutation(len(dataset.y_train))[:batch_size * steps]
    images, labels = data.to_float(dataset.x_train[pick]), dataset.y_train[pick].astype(np.int32)
    return list(tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size))


def ours(dataset, config, batches, eps_warmup_steps):
    """Per-step losses of our train step for `config`'s method, run by fit (recovered from the running
    mean fit reports, k·m_k − (k−1)·m_(k−1): exact while the losses are of one scale, only a sign of
    divergence once they explode)."""
    method = methods.get(config.method)
    keras.utils.set_random_seed(config.seed)
    parts = trainer.build_parts(config, dataset, method)
    optimizers = method.optimizers(config, parts, {"train": SCHEDULE_STEPS})
    model = method.stages[0].model(parts, optimizers, config, eps_warmup_steps)
    means = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: means.append(float(logs["loss"])))
    model.fit(tf.data.Dataset.from_tensor_slices(tuple(map(tf.stack, zip(*batches)))), epochs=1, callbacks=[record],
              verbose=0, shuffle=False)
    return [(k + 1) * m - k * previous for k, (m, previous) in enumerate(zip(means, [0.0] + means))]


def classifier(dataset, config, mean_pool=False):
    """Our classifier at its initial weights (the run's seed); with `mean_pool`, the same trunk and head
    with the summed features divided by the positions summed."""
    keras.utils.set_random_seed(config.seed)
    discriminator = models.build_discriminator(dataset.image_shape, dataset.num_classes, config.width, config.depth,
                                               config.spectral_norm)
    if not mean_pool:
        return models.classifier_from(discriminator)
    pooling = discriminator.get_layer("sum_pool")
    averaged = keras.layers.Rescaling(1.0 / summed_positions(pooling))(pooling.output)
    return keras.Model(discriminator.inputs[0], discriminator.get_layer("cls")(averaged))


def summed_positions(pooling):
    """The positions of the last feature map that a GlobalSumPooling layer sums over."""
    return math.prod(pooling.input.shape[1:3])


def plain(model, batches, lr):
    """Per-step clean cross-entropy of Keras' SGD with momentum 0.9 training `model` on `batches`."""
    optimizer = keras.optimizers.SGD(lr, momentum=0.9)
    logged = []
    for x, y in batches:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(losses.cross_entropy(y, model(x, training=True)))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        logged.append(float(loss))
    return logged


def at_init(model, batch):
    """A classifier's largest |logit|, cross-entropy and global gradient norm on `batch`."""
    x, y = batch
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = tf.reduce_mean(losses.cross_entropy(y, logits))
    norm = tf.linalg.global_norm(tape.gradient(loss, model.trainable_variables))
    return dict(max_abs_logit=float(tf.reduce_max(tf.abs(logits))), loss=float(loss), grad_norm=float(norm))


def outcome(losses_per_step):
    """'non-finite at step k' (1-based), or the largest and the last step's loss."""
    bad = [i for i, v in enumerate(losses_per_step) if not math.isfinite(v)]
    if bad:
        return f"non-finite at step {bad[0] + 1}"
    return f"largest {max(losses_per_step):.3g}, last {losses_per_step[-1]:.3g}"


COLUMNS = ("trades", "trades-warmup", "clean", "plain", "plain-mean")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=os.path.join("..", "shared", "data"))
    p.add_argument("--lrs", type=float, nargs="+", default=[0.1, 0.01, 1e-3, 1e-4])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--weight-decay", type=float, default=2e-4)
    p.add_argument("--eps-warmup-steps", type=int, default=75,
                   help="trades-warmup's ramp (a 1,000-image study's 5 warm-up epochs: 75 steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    dataset = data.load(args.dataset, args.data_dir)
    config = run_config(dataset, "trades", "adam", methods.config_for(dataset.name, "trades").d_lr, args)
    batches = some_batches(dataset, config.batch_size, args.steps, args.seed)
    init = {kind: at_init(classifier(dataset, config, kind == "mean-pooled"), batches[0])
            for kind in ("ours", "mean-pooled")}
    positions = summed_positions(classifier(dataset, config).get_layer("sum_pool"))

    rows = []
    for optimizer, lr in [("sgd", lr) for lr in args.lrs] + [("adam", config.d_lr)]:
        trades, pgd_at = (run_config(dataset, method, optimizer, lr, args) for method in ("trades", "pgd-at"))
        row = dict(optimizer=optimizer, lr=lr, trades=ours(dataset, trades, batches, 0),
                   **{"trades-warmup": ours(dataset, trades, batches, args.eps_warmup_steps)})
        if optimizer == "sgd":
            row.update(clean=ours(dataset, pgd_at, batches, EPS_NEVER), plain=plain(classifier(dataset, trades),
                       batches, lr), **{"plain-mean": plain(classifier(dataset, trades, mean_pool=True), batches, lr)})
        rows.append(row)
        print(f"{optimizer} {lr:g}: " + "; ".join(f"{k} {outcome(row[k])}" for k in COLUMNS if k in row), flush=True)

    print(f"\nAt initialisation ({dataset.name}, width {args.width}, the first batch; chance's cross-entropy is "
          f"log {dataset.num_classes} = {math.log(dataset.num_classes):.2f}; the pooling sums {positions} positions):")
    for kind, values in init.items():
        print(f"  {kind}: largest |logit| {values['max_abs_logit']:.2f}, cross-entropy {values['loss']:.2f}, "
              f"gradient norm {values['grad_norm']:.2f}")
    print(f"\nFirst {args.steps} steps:\n")
    print("| optimiser | learning rate | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for row in rows:
        print(f"| {row['optimizer']} | {row['lr']:g} | " + " | ".join(outcome(row[k]) if k in row else "–"
                                                                    for k in COLUMNS) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "command": " ".join(sys.argv), "at_init": init,
                       "summed_positions": positions, "rows": rows, "settings": vars(args)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
