"""Train a robust classifier with Rob-GAN: python train.py --dataset mnist --data-dir ../shared/data"""

import argparse
import os
import sys

from robgan_tf import runner
from robgan_tf.callbacks import TrainingDiverged
from robgan_tf.data import DataError, load
from robgan_tf.models import SPECTRAL_NORM_CHOICES
from robgan_tf.rundir import RunDirError
from robgan_tf.training import REAL_INPUTS


def _defaults(key):
    m, c = runner.DEFAULTS["mnist"][key], runner.DEFAULTS["cifar10"][key]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return f"default: mnist {fmt(m)}, cifar10 and others {fmt(c)}"


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" to flags whose help does not already name their default."""

    def _get_help_string(self, action):
        return action.help if "default" in (action.help or "") else super()._get_help_string(action)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_Help)
    p.add_argument("--dataset", default="cifar10", help="mnist, cifar10 or any tfds image-classification name")
    p.add_argument("--method", choices=runner.METHODS, default="robgan",
                   help="robgan; or a baseline training the same classifier alone: pgd-at (Madry et al.), "
                        "fgsm-rs (Wong et al., cyclic learning rate, catastrophic-overfitting guard), "
                        "trades (Zhang et al.)")
    p.add_argument("--data-dir", help="folder with <dataset>_train.npz and <dataset>_test.npz "
                                      "(arrays x uint8 NHWC, y integer labels); without it, tensorflow_datasets")
    p.add_argument("--tfds-dir", help="tensorflow_datasets data_dir")
    p.add_argument("--out", help="run directory (default: checkpoints/<dataset>-<method>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    per_dataset = [
        ("--epochs", int, "co-training epochs"),
        ("--finetune-epochs", int, "fine-tuning epochs after co-training (G frozen)"),
        ("--batch-size", int, "global batch size (split across replicas)"),
        ("--eps", float, "L-inf attack radius in pixel units ([0, 1] images)"),
        ("--pgd-steps", int, "PGD steps of the training attack (fgsm-rs: one step of 1.25*eps)"),
        ("--eps-warmup-epochs", float, "epochs over which eps ramps linearly from 0"),
        ("--width", int, "discriminator channels"),
        ("--g-width", int, "generator channels"),
        ("--depth", int, "discriminator residual blocks (the first two halve the image)"),
        ("--d-lr", float, "discriminator Adam learning rate"),
        ("--g-lr", float, "generator Adam learning rate"),
        ("--finetune-lr", float, "fine-tuning Adam learning rate"),
        ("--fake-class-weight", float, "weight of D's class loss on generated images in co-training"),
        ("--n-dis", int, "D updates per G update in Rob-GAN's co-training"),
        ("--eval-examples", int, "stratified test images for the final clean/PGD-20 evaluation"),
    ]
    for flag, typ, text in per_dataset:
        p.add_argument(flag, type=typ, default=None, help=f"{text} ({_defaults(flag[2:].replace('-', '_'))})")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help=f"random crop (4-px padding) and flip ({_defaults('augment')})")
    p.add_argument("--real-rf-input", choices=REAL_INPUTS, default=None,
                   help="real images D's real/fake head sees: PGD-attacked (the paper) or clean "
                        f"({_defaults('real_rf_input')})")
    p.add_argument("--spectral-norm", choices=SPECTRAL_NORM_CHOICES, default=None,
                   help="Rob-GAN's D: no spectral normalisation, the real/fake head only, or all of D "
                        f"(the baselines' classifier has none) ({_defaults('spectral_norm')})")
    c = runner.COMMON
    p.add_argument("--pgd-step-size", type=float, default=None, help="PGD step size (default 2.5*eps/steps)")
    p.add_argument("--lam", type=float, default=c["lam"], help="weight of CE on attacked fakes in fine-tuning")
    p.add_argument("--beta", type=float, default=c["beta"], help="TRADES: weight of the KL term")
    p.add_argument("--gen-ratio", type=float, default=c["gen_ratio"],
                   help="fraction of each batch replaced by generated images with their labels (robgan: "
                        "its own generator, in fine-tuning; pgd-at, trades: --generator)")
    p.add_argument("--generator", help="a frozen generator.keras (from a Rob-GAN run) for --gen-ratio")
    p.add_argument("--beta-1", type=float, default=c["beta_1"], help="Adam beta_1 of all optimizers")
    p.add_argument("--train-limit", type=int, default=None, help="train on a shuffled subset of N images")
    p.add_argument("--checkpoint-every", type=int, default=c["checkpoint_every"], help="checkpoint every N steps")
    p.add_argument("--seed", type=int, default=c["seed"], help="random seed")
    p.add_argument("--distribute", choices=("none", "mirrored", "multiworker"), default="none",
                   help="mirrored: tf.distribute.MirroredStrategy over all local GPUs; multiworker: "
                        "MultiWorkerMirroredStrategy over the cluster in TF_CONFIG (see README)")
    p.add_argument("--xla", action="store_true", help="compile the train step with XLA (jit_compile)")
    p.add_argument("--mixed-precision", choices=("none", "mixed_float16", "mixed_bfloat16"), default="none",
                   help="compute in float16/bfloat16 on GPUs (loss scaling for float16); attacks and "
                        "their input gradients stay float32")
    return p.parse_args(argv)


def config_from(args):
    config = runner.default_config(args.dataset)
    for key in config:
        value = getattr(args, key, None)
        if value is not None:
            config[key] = value
    config["dataset"] = args.dataset
    return config


def main(argv=None):
    args = parse_args(argv)
    gan_only = [f for f in ("--spectral-norm", "--n-dis") if getattr(args, f[2:].replace("-", "_")) is not None]
    if args.method != "robgan" and gan_only:
        print(f"error: {' and '.join(gan_only)} set Rob-GAN's discriminator; --method {args.method} trains "
              "a classifier alone", file=sys.stderr)
        return 1
    config = config_from(args)
    out = args.out or os.path.join("checkpoints", f"{args.dataset}-{args.method}")
    try:
        dataset = load(args.dataset, args.data_dir, args.tfds_dir)
        runner.train(config, dataset, out, overwrite=args.overwrite)
    except (DataError, RunDirError, TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
