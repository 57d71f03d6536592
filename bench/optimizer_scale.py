"""Why SGD at the reference code's learning rates diverges on our classifier: python bench/optimizer_scale.py

Our classifier is SN-GAN's discriminator trunk: residual blocks with no normalisation and a sum (not
a mean) over the last feature map's positions. The reference code of TRADES and of fast adversarial
training trains batch-normalised, average-pooled networks with SGD at 0.1 (CIFAR-10) or 0.01
(MNIST), rates chosen for that network's gradient scale. For each learning rate this runs the first
steps of two trainings from the same initial weights on the same batches:
  ours   TRADES (beta 6) through fit: our train step with our SGD (momentum, L2 weight decay) and
         learning-rate schedule, the inner attack included;
  plain  Keras' SGD with momentum on the clean cross-entropy, written here: no weight decay, no
         attack, no schedule, none of robgan_tf's training code;
  plain, mean-pooled  the same, with the classifier's summed features divided by the positions
         summed (average pooling, as a WRN has);
and prints the step at which each loss first turns non-finite (or the last loss), with the
classifier's logits and gradient norm at initialisation. If plain diverges where ours does, the
learning rate does not fit the network, whatever our SGD path does; if the mean-pooled one trains,
the sum pooling's scale is why. Adam at the dataset's default rate is the last row, for contrast.
About two minutes on 2 cores.
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

SCHEDULE_STEPS = 2000  # the cosine schedule's length: about a short study's; its first steps run at the full rate


def run_config(dataset, optimizer, lr, args):
    """TRADES' settings for one row: the study's classifier with SGD (or Adam) at `lr`."""
    sgd = dict(classifier_optimizer="sgd", momentum=0.9, weight_decay=args.weight_decay) if optimizer == "sgd" else {}
    return methods.config_for(dataset.name, "trades", {"d_lr": lr, "width": args.width, "augment": False,
                                                         "eps_warmup_epochs": 0.0, "seed": args.seed, **sgd})


def first_batches(dataset, config, steps):
    """`steps` training batches (float images in [0, 1], int labels) of images drawn at random from the
    whole training split (a data file may be sorted by class)."""
    pick = np.random.default_rng(config.seed).permutation(len(dataset.y_train))[:config.batch_size * steps]
    return list(data.TrainData(dataset.x_train[pick], dataset.y_train[pick], config.batch_size,
                               seed=config.seed).epochs(0, 1))


def ours(dataset, config, batches):
    """Per-step losses of our TRADES step (the running mean fit reports turns non-finite at the first
    non-finite step)."""
    method = methods.get("trades")
    keras.utils.set_random_seed(config.seed)
    parts = trainer.build_parts(config, dataset, method)
    optimizers = method.optimizers(config, parts, {"train": SCHEDULE_STEPS})
    model = method.stages[0].model(parts, optimizers, config)
    logged = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: logged.append(float(logs["loss"])))
    images = tf.data.Dataset.from_tensor_slices(tuple(tf.concat(part, 0) for part in zip(*batches)))
    model.fit(images.batch(config.batch_size), epochs=1, callbacks=[record], verbose=0, shuffle=False)
    return logged


def classifier(dataset, config, mean_pool=False):
    """Our classifier at its initial weights (the run's seed); with `mean_pool`, the same trunk and head
    with the summed features divided by the positions summed (an average pooling, as in a WRN)."""
    keras.utils.set_random_seed(config.seed)
    discriminator = models.build_discriminator(dataset.image_shape, dataset.num_classes, config.width, config.depth,
                                               config.spectral_norm)
    if not mean_pool:
        return models.classifier_from(discriminator)
    features = discriminator.get_layer("sum_pool").output
    averaged = keras.layers.Rescaling(1.0 / positions(discriminator.get_layer("sum_pool")))(features)
    return keras.Model(discriminator.inputs[0], discriminator.get_layer("cls")(averaged))


def positions(pooling):
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


def outcome(logged):
    """'non-finite at step k' (1-based) or the last loss."""
    bad = [i for i, v in enumerate(logged) if not math.isfinite(v)]
    return f"non-finite at step {bad[0] + 1}" if bad else f"finite; last loss {logged[-1]:.3g}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=os.path.join("..", "shared", "data"))
    p.add_argument("--lrs", type=float, nargs="+", default=[0.1, 0.01, 1e-3, 1e-4])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--weight-decay", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    dataset = data.load(args.dataset, args.data_dir)
    adam_lr = methods.config_for(dataset.name, "trades").d_lr
    rows, init = [], {}
    for optimizer, lr in [("sgd", lr) for lr in args.lrs] + [("adam", adam_lr)]:
        config = run_config(dataset, optimizer, lr, args)
        batches = first_batches(dataset, config, args.steps)
        if not init:
            init = {kind: at_init(classifier(dataset, config, kind == "mean-pooled"), batches[0])
                    for kind in ("ours", "mean-pooled")}
        row = dict(optimizer=optimizer, lr=lr, ours=ours(dataset, config, batches))
        if optimizer == "sgd":
            row["plain"] = plain(classifier(dataset, config), batches, lr)
            row["plain_mean_pooled"] = plain(classifier(dataset, config, mean_pool=True), batches, lr)
        rows.append(row)
        print(f"{optimizer} {lr:g}: " + "; ".join(f"{k} {outcome(v)}" for k, v in row.items() if isinstance(v, list)),
              flush=True)
    print(f"\nAt initialisation ({dataset.name}, width {args.width}, on the first batch; chance's cross-entropy is "
          f"log {dataset.num_classes} = {math.log(dataset.num_classes):.2f}; the pooling sums "
          f"{positions(classifier(dataset, config).get_layer('sum_pool'))} positions):")
    for kind, values in init.items():
        print(f"  {kind}: largest |logit| {values['max_abs_logit']:.2f}, cross-entropy {values['loss']:.2f}, "
              f"gradient norm {values['grad_norm']:.2f}")
    print(f"\n| optimiser | learning rate | TRADES, ours (first {args.steps} steps) | clean CE, plain Keras SGD | "
          f"the same, mean-pooled |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['optimizer']} | {row['lr']:g} | {outcome(row['ours'])} | "
              + " | ".join(outcome(row[k]) if k in row else "–" for k in ("plain", "plain_mean_pooled")) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "command": " ".join(sys.argv), "at_init": init,
                       "rows": rows, "settings": vars(args)}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
