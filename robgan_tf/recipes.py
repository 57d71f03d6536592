"""What a training method is made of: its `Stage`s and the `Method` that lists them (declared
in methods.py), the `Parts` (models) a run builds once, and what a stage's callbacks may see."""

import dataclasses
from typing import Callable

import keras

from robgan_tf import config as cfg
from robgan_tf import quality, rundir


@dataclasses.dataclass(frozen=True)
class Parts:
    """The models of a run, built once: G (None when a method has none), D and its classifier;
    with --ema-decay, the classifier's weight average and `kept`, the model it is copied into
    (else `kept` is the classifier): what is validated, evaluated, saved and exported; with
    --g-ema-decay, G's weight average and `sampled`, the generator it is copied into: what draws
    samples and fine-tuning's fakes, is scored and saved."""

    generator: keras.Model | None
    discriminator: keras.Model
    classifier: keras.Model
    average: object = None
    kept: keras.Model | None = None
    generator_average: object = None
    sampled: keras.Model | None = None

    def keep(self):
        """Puts the weights to keep into `kept` (the average, if there is one) and returns it."""
        return _averaged(self.average, self.kept, self.classifier)

    def sampler(self):
        """Puts G's weights to sample with into `sampled` (G's average, if there is one) and returns it."""
        return _averaged(self.generator_average, self.sampled, self.generator)


def _averaged(average, holder, model):
    """`holder` set to `average`'s weights, or `model` itself when there is no average."""
    if average is None:
        return model
    average.copy_to(holder)
    return holder


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What a stage's callbacks may need: the run's settings, directory, the stage, and a batch of
    training images to check on: the method's held-out examples, or else the first training batch
    (Wong et al.'s guard checks that one)."""

    config: cfg.Config
    out_dir: str
    check_batch: tuple
    stage: str


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a method: its name (in metrics.csv, logs/ and the progress bar), its
    train-step class and how to build and compile it, its epochs, the batches each step takes,
    whether eps warms up, what it does with G ("trained": scored and drawn every epoch;
    "frozen": scores kept from before), whether its batches take --synthetic images, its
    extra callbacks and the metrics they add to the epoch's row."""

    name: str
    step_class: type
    build: Callable
    epochs: Callable[[cfg.Config], int]
    batches_per_step: Callable[[cfg.Config], int] = lambda config: 1
    warms_up: bool = True
    generator: str | None = None
    synthetic: bool = False
    callbacks: Callable[[StageContext], list] = lambda context: []
    callback_columns: tuple = ()

    def model(self, parts, optimizers, config, eps_warmup_steps=0):
        """The compiled train-step model of this stage over the run's `parts` and `optimizers`."""
        return self.build(self.step_class, parts, optimizers, config, eps_warmup_steps)


@dataclasses.dataclass(frozen=True)
class Method:
    """A training method: its stages, optimizers (`optimizers(config, parts, steps)` with the
    optimizer steps of each stage), whether it trains a generator, the settings it fixes
    (`fixed(config)`), those it does not use (name: why) and refuses when set, extra checks,
    its per-dataset defaults, and how many training images it holds out for its callbacks."""

    name: str
    summary: str
    stages: tuple
    optimizers: Callable
    trains_generator: bool = False
    fixed: Callable[[cfg.Config], dict] = lambda config: {}
    unused: dict = dataclasses.field(default_factory=dict)
    check: Callable[[cfg.Config], None] = lambda config: None
    defaults: dict = dataclasses.field(default_factory=dict)
    held_out: Callable[[cfg.Config], int] = lambda config: 0

    def metric_columns(self):
        """metrics.csv's columns for this method: its stages' declared metrics (their steps' and
        callbacks'), and the
        generator's quality scores when a stage draws from G."""
        names = dict.fromkeys(n for stage in self.stages
                              for n in stage.step_class.metric_names + stage.callback_columns)
        scored = any(stage.generator for stage in self.stages)
        return rundir.ROW_KEYS + tuple(names) + (quality.COLUMNS if scored else ())
