"""Every setting in one typed place: `Config` (a training run) and `AttackSettings` (an
evaluation), each field with its type, default, help and valid range; the per-dataset defaults,
the evaluation's large eps and the model-size presets. The command lines are generated from these
dataclasses (`add_arguments`), and config.json is `Config` as a dict. No TensorFlow in here.
"""

import argparse
import dataclasses
import types
import typing


class ConfigError(ValueError):
    """A setting is out of its range or does not apply; the one-line message names the flag."""


@dataclasses.dataclass(frozen=True)
class Range:
    """Valid values of a number: low/high bounds, each inclusive unless open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value):
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or (value < self.high or (not self.high_open and value == self.high))

    def __str__(self):
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


POSITIVE = Range(0, None, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_1 = Range(1)
FRACTION = Range(0, 1, high_open=True)
PROBABILITY = Range(0, 1)


def setting(default, help, valid=None, choices=None):
    """A dataclass field with its help text and its valid range or choices."""
    return dataclasses.field(default=default, metadata={"help": help, "valid": valid, "choices": choices})


@dataclasses.dataclass(frozen=True)
class Config:
    """A training run. Defaults here are CIFAR-10's (and any other dataset's); PER_DATASET holds
    MNIST's, and a method may override some (methods.py)."""

    dataset: str = setting("cifar10", "mnist, cifar10 or any tfds image-classification name")
    method: str = setting("robgan", "training method (see methods.py)")
    # the attack trained against
    eps: float = setting(8 / 255, "L-inf attack radius in pixel units ([0, 1] images)", Range(0, 1, low_open=True))
    pgd_steps: int = setting(7, "PGD steps of the training attack", AT_LEAST_1)
    pgd_step_size: float | None = setting(None, "PGD step size (default 2.5*eps/steps)", POSITIVE)
    eps_warmup_epochs: float = setting(5.0, "epochs over which eps ramps linearly from 0", NON_NEGATIVE)
    # the models
    width: int = setting(128, "discriminator channels", AT_LEAST_1)
    g_width: int = setting(256, "generator channels", AT_LEAST_1)
    depth: int = setting(4, "discriminator residual blocks (the first two halve the image)", AT_LEAST_1)
    z_dim: int = setting(128, "generator noise dimensions", AT_LEAST_1)
    spectral_norm: str = setting("all", "Rob-GAN's D: spectral normalisation on no layer, the real/fake head "
                                        "only, or all of D", choices=("none", "head", "all"))
    # the schedule
    epochs: int = setting(100, "co-training epochs (a baseline: training epochs)", AT_LEAST_1)
    finetune_epochs: int = setting(10, "Rob-GAN fine-tuning epochs after co-training (G frozen)", NON_NEGATIVE)
    batch_size: int = setting(64, "global batch size (split across replicas)", AT_LEAST_1)
    d_lr: float = setting(2e-4, "discriminator (a baseline: classifier) learning rate", POSITIVE)
    g_lr: float = setting(2e-4, "generator Adam learning rate", POSITIVE)
    finetune_lr: float = setting(1e-4, "fine-tuning Adam learning rate", POSITIVE)
    beta_1: float = setting(0.5, "Adam beta_1 of all optimizers", FRACTION)
    beta_2: float = setting(0.999, "Adam beta_2 of all optimizers", FRACTION)
    classifier_optimizer: str = setting("adam", "a baseline's optimizer: adam, or sgd with --momentum (the "
                                                "baselines' reference code)", choices=("adam", "sgd"))
    momentum: float = setting(0.9, "with --classifier-optimizer sgd: its momentum", FRACTION)
    weight_decay: float = setting(0.0, "a baseline's L2 weight decay: decay/2 x |w|^2 added to its loss, so decay x w "
                                       "to its gradient, as SGD(weight_decay=) in PyTorch", NON_NEGATIVE)
    augment: bool = setting(True, "random crop (4-px reflection padding) and horizontal flip")
    train_limit: int | None = setting(None, "train on a stratified, shuffled subset of N images", AT_LEAST_1)
    # Rob-GAN
    real_rf_input: str = setting("adversarial", "real images D's real/fake head sees: PGD-attacked (the paper) "
                                                "or clean", choices=("adversarial", "clean"))
    fake_class_weight: float = setting(0.0, "weight of D's class loss on generated images in co-training",
                                       NON_NEGATIVE)
    n_dis: int = setting(2, "D updates per G update in Rob-GAN's co-training", AT_LEAST_1)
    gan_loss: str = setting("bce", "the real/fake loss of D and G: bce (Rob-GAN; non-saturating for G) or hinge "
                                   "(SN-GAN, BigGAN)", choices=("bce", "hinge"))
    g_class_weight: float = setting(1.0, "weight of G's class loss (AC-GAN's term; below 1 pulls G less towards "
                                         "one template per class)", NON_NEGATIVE)
    projection: bool = setting(False, "D's real/fake logit linear(h) + <embed(y), h> (the projection "
                                      "discriminator, Miyato & Koyama 2018) instead of linear(h)")
    g_ema_decay: float = setting(0.0, "decay of an exponential moving average of G's weights (BigGAN: 0.999); "
                                      "the average draws the samples, fine-tuning's fakes, the metrics and "
                                      "generator.keras (0: off)", FRACTION)
    diffaugment: str = setting("", "DiffAugment (Zhao et al. 2020) of what D's real/fake head sees, in D's and G's "
                                   "updates: a comma list of color, translation, cutout (for small training sets)")
    lam: float = setting(0.5, "weight of CE on attacked generated images in fine-tuning", NON_NEGATIVE)
    gen_ratio: float = setting(0.0, "fraction of each batch replaced by generated images with their labels "
                                    "(robgan: its own G, in fine-tuning; pgd-at, trades: --generator)", FRACTION)
    generator: str | None = setting(None, "a frozen generator.keras (from a Rob-GAN run) for --gen-ratio")
    # TRADES
    beta: float = setting(6.0, "TRADES: weight of the KL term", NON_NEGATIVE)
    # FGSM-RS
    fgsm_clip_start: bool = setting(True, "FGSM-RS: clip its random start to [0, 1] before the gradient, as the "
                                          "reference's CIFAR-10 script does (its MNIST script does not: the "
                                          "default there)")
    # N-FGSM
    nfgsm_noise: float = setting(2.0, "N-FGSM: its start noise is uniform in ±nfgsm_noise x eps (de Jorge et al. "
                                      "2022: 2)", NON_NEGATIVE)
    # generated data from disk (sample.py), weight averaging, model selection
    synthetic: str | None = setting(None, "a .npz of generated images (sample.py) mixed into every batch of "
                                          "pgd-at, trades and Rob-GAN's fine-tuning")
    synthetic_fraction: float = setting(0.7, "with --synthetic: fraction of each batch taken from it", FRACTION)
    synthetic_smoothing: float = setting(0.1, "with --synthetic: label smoothing on the generated images' labels",
                                         FRACTION)
    ema_decay: float = setting(0.0, "decay of an exponential moving average of the classifier's weights, with "
                                    "warm-up min(decay, (1+t)/(10+t)); the average is what is validated, "
                                    "evaluated, saved and exported (0: off; Gowal et al. 2021: 0.995)", FRACTION)
    val_examples: int = setting(0, "training images held out as a validation split: PGD-10 accuracy on them "
                                   "every --val-every epochs, and the best epoch's classifier is the one kept "
                                   "(0: off)",
                                NON_NEGATIVE)
    val_every: int = setting(1, "with --val-examples: validate every N epochs and at each stage's last; the "
                                "best epoch is chosen among those (short epochs of a small training set: "
                                "raise it)", AT_LEAST_1)
    # the run
    eval_examples: int = setting(1000, "stratified test images for the final clean/PGD-20 evaluation", AT_LEAST_1)
    seed: int = setting(0, "random seed", NON_NEGATIVE)
    score_every: int = setting(1, "draw and score G (GAN-test, GAN-train, diversity) every N epochs and at the "
                                   "last (short epochs of a small training set: raise it)", AT_LEAST_1)
    checkpoint_every: int = setting(200, "checkpoint every N steps (and at every epoch end)", NON_NEGATIVE)
    distribute: str = setting("none", "none; mirrored: MirroredStrategy over all local GPUs; multiworker: "
                                      "MultiWorkerMirroredStrategy over the cluster in TF_CONFIG",
                              choices=("none", "mirrored", "multiworker"))
    xla: bool = setting(False, "compile the train step with XLA (jit_compile); slower on CPUs")
    mixed_precision: str = setting("none", "compute in float16/bfloat16 (loss scaling for float16); auto: "
                                           "bfloat16 where the hardware computes it (a GPU of compute capability "
                                           "8+, a CPU with AVX512-BF16 or AMX), else float32. Attack perturbations "
                                           "and losses stay float32; evaluation, validation and export run "
                                           "in float32",
                                   choices=("none", "auto", "mixed_float16", "mixed_bfloat16"))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def as_dict(self):
        return dataclasses.asdict(self)


# MNIST's own defaults: a small model sized for a 2-core CPU.
PER_DATASET = {
    "mnist": dict(eps=0.3, pgd_steps=10, width=32, g_width=32, depth=3, epochs=3, finetune_epochs=3,
                  eps_warmup_epochs=1.0, d_lr=1e-3, g_lr=2e-4, finetune_lr=5e-4, augment=False,
                  real_rf_input="clean", n_dis=1, spectral_norm="head", eval_examples=10000),
}

# The eps at which any image is reachable, so white-box attacks must bring accuracy to ~0 (masking check).
LARGE_EPS = {"mnist": 1.0}
LARGE_EPS_OTHERS = 0.5

# Model sizes: "quick" fits a 2-core CPU (MNIST's defaults; the CIFAR-10 studies), "full" is paper scale.
PRESETS = {
    "quick": {"mnist": dict(width=32, g_width=32, depth=3, pgd_steps=10, batch_size=64),
              "cifar10": dict(width=32, g_width=64, depth=4, pgd_steps=7, batch_size=64)},
    "full": {"mnist": dict(width=64, g_width=64, depth=4, pgd_steps=40, batch_size=64),
             "cifar10": dict(width=128, g_width=256, depth=4, pgd_steps=7, batch_size=64)},
}


def dataset_defaults(dataset):
    """The settings that differ from Config's defaults for `dataset` (others take CIFAR-10's)."""
    return dict(PER_DATASET.get(dataset, {}))


def large_eps(dataset):
    return LARGE_EPS.get(dataset, LARGE_EPS_OTHERS)


@dataclasses.dataclass(frozen=True)
class AttackSettings:
    """An evaluation's attack budgets (PGD steps and restarts, APGD iterations and targets, Square
    queries), its batch size and seed."""

    pgd_steps: int = setting(20, "PGD steps", AT_LEAST_1)
    pgd_restarts: int = setting(1, "PGD random restarts", AT_LEAST_1)
    apgd_steps: int = setting(100, "APGD iterations", AT_LEAST_1)
    apgd_targets: int = setting(9, "APGD-T target classes", AT_LEAST_1)
    square_queries: int = setting(5000, "Square query budget per example", Range(2))
    square_p_init: float = setting(0.8, "Square's initial fraction of the image a window covers", Range(0, 1, True))
    batch_size: int = setting(500, "examples per attack batch", AT_LEAST_1)
    seed: int = setting(0, "seed of the test subset and the attacks", NON_NEGATIVE)


def flag(name):
    return "--" + name.replace("_", "-")


def check(settings):
    """Raises ConfigError naming the flag of the first setting of the dataclass instance
    `settings` that is out of its range or choices."""
    for f in dataclasses.fields(settings):
        value, valid, choices = getattr(settings, f.name), f.metadata.get("valid"), f.metadata.get("choices")
        if value is None:
            if not _optional(type(settings), f.name):
                raise ConfigError(f"{flag(f.name)} needs a value")
            continue
        if choices and value not in choices:
            raise ConfigError(f"{flag(f.name)} {value!r}: use one of {', '.join(choices)}")
        if valid is not None and value not in valid:
            raise ConfigError(f"{flag(f.name)} {value:g} is out of range: it must be {valid}")


def _hints(cls):
    return typing.get_type_hints(cls)


def _optional(cls, name):
    hint = _hints(cls)[name]
    return isinstance(hint, types.UnionType) and type(None) in hint.__args__


def _base_type(cls, name):
    hint = _hints(cls)[name]
    if isinstance(hint, types.UnionType):
        return next(a for a in hint.__args__ if a is not type(None))
    return hint


def add_arguments(parser, cls, defaults_text=None, choices=None):
    """Adds a flag per field of the dataclass `cls` to `parser`, each defaulting to None (so that
    what the user set can be told apart from a default). `defaults_text(name)` may describe a
    field's default (e.g. per dataset); `choices` overrides a field's choices."""
    choices = choices or {}
    for f in dataclasses.fields(cls):
        kind, text = _base_type(cls, f.name), f.metadata["help"]
        valid = f.metadata.get("valid")
        default = defaults_text(f.name) if defaults_text else f"default: {_show(f.default)}"
        help_text = f"{text}{f'; {valid}' if valid else ''} ({default})"
        options = dict(default=None, help=help_text, dest=f.name)
        if kind is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **options)
        else:
            parser.add_argument(flag(f.name), type=kind, choices=choices.get(f.name, f.metadata.get("choices")),
                                **options)


def given(args, cls):
    """The fields of `cls` that the parsed `args` set (not None)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if getattr(args, f.name, None) is not None}


def _show(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def describe_default(name, dataset_values):
    """ "default: 0.3 (mnist), 0.03137 (cifar10 and others)" from {dataset: value}."""
    shown = {dataset: _show(v) for dataset, v in dataset_values.items()}
    if len(set(shown.values())) == 1:
        return f"default: {next(iter(shown.values()))}"
    return "default: " + ", ".join(f"{v} ({d})" for d, v in shown.items())
