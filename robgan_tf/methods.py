"""The method registry: each training method declared in one place.

A `Method` (recipes.py) lists its stages (each a train-step class, how to build and compile it,
its epochs, batches per step and callbacks), its optimizers and schedules, the settings it fixes
or does not use, its own checks and its per-dataset default overrides. `trainer.train` runs a method's
stages in order; nothing outside this module asks which method it runs. To add a method, add an
entry to METHODS (and its train-step class to training.py, or gan_training.py for a GAN).
"""

import dataclasses

import keras

from robgan_tf import config as cfg
from robgan_tf import diffaugment, distribute, rundir
from robgan_tf.callbacks import OverfitGuard
from robgan_tf.recipes import Method, Stage
from robgan_tf.schedules import CyclicLR
from robgan_tf.gan_training import ConditionalGAN, FineTuner, RobGAN
from robgan_tf.training import TRADES, AdversarialTraining, NoiseFGSM, RandomStartFGSM


def adam(config, learning_rate, variables):
    """Adam with the run's betas, wrapped for float16 loss scaling, built for `variables`."""
    return _built(config, keras.optimizers.Adam(learning_rate, config.beta_1, config.beta_2), variables)


def classifier_optimizer(config, learning_rate, variables):
    """A baseline's optimizer: Adam, or (--classifier-optimizer sgd) SGD with momentum (its weight decay
    is in the train step's loss, for either)."""
    if config.classifier_optimizer == "sgd":
        return _built(config, keras.optimizers.SGD(learning_rate, momentum=float(config.momentum)), variables)
    return adam(config, learning_rate, variables)


def _built(config, optimizer, variables):
    """`optimizer` wrapped for float16 loss scaling and built for `variables`."""
    if config.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(variables)
    return optimizer


def attack_settings(config, eps_warmup_steps):
    """The training attack's settings for a train-step class."""
    return dict(eps=config.eps, pgd_steps=config.pgd_steps, pgd_step_size=config.pgd_step_size, seed=config.seed,
                eps_warmup_steps=eps_warmup_steps, attack_jit=distribute.jit_options(config)["attack_jit"],
                attack_loss_scale=1024.0 if config.mixed_precision == "mixed_float16" else 1.0)


def _compile(model, config, **optimizers):
    model.compile(**optimizers, jit_compile=distribute.jit_options(config)["model_jit"])
    return model


def _overfit_guard(context):
    """Wong et al.'s catastrophic-overfitting guard (OverfitGuard) on the stage's check batch."""
    return [OverfitGuard(*context.check_batch, context.config.eps, context.config.seed,
                         record=lambda fired: rundir.write_early_stop(context.out_dir,
                                                                      {**fired, "stage": context.stage}))]


GUARDED = dict(callbacks=_overfit_guard, callback_columns=OverfitGuard.COLUMNS)  # a guarded stage's settings


# Rob-GAN: co-training, then fine-tuning of the classifier with G frozen.

def _cotrain(step_class, parts, optimizers, config, warmup):
    model = step_class(parts.generator, parts.discriminator, parts.classifier,
                       fake_class_weight=config.fake_class_weight, n_dis=config.n_dis,
                       real_rf_input=config.real_rf_input, gan_loss=config.gan_loss,
                       g_class_weight=config.g_class_weight, diffaugment=diffaugment.parse(config.diffaugment),
                       generator_average=parts.generator_average, average=parts.average,
                       **attack_settings(config, warmup))
    return _compile(model, config, d_optimizer=optimizers["d_optimizer"], g_optimizer=optimizers["g_optimizer"])


def _finetune(step_class, parts, optimizers, config, warmup):
    model = step_class(parts.sampler(), parts.classifier, lam=config.lam, gen_ratio=config.gen_ratio,
                       average=parts.average, **attack_settings(config, warmup))
    return _compile(model, config, optimizer=optimizers["ft_optimizer"])


def _gan_optimizers(config, parts, steps):
    return dict(d_optimizer=adam(config, config.d_lr, parts.discriminator.trainable_variables),
                g_optimizer=adam(config, config.g_lr, parts.generator.trainable_variables))


def _robgan_optimizers(config, parts, steps):
    # fine-tuning anneals its learning rate to 0 (cosine) over the whole stage
    finetune_lr = keras.optimizers.schedules.CosineDecay(config.finetune_lr, max(1, steps["finetune"]))
    return dict(**_gan_optimizers(config, parts, steps),
                ft_optimizer=adam(config, finetune_lr, parts.classifier.trainable_variables))


# the baselines' optimizer settings, which a GAN method (Adam for G, D and fine-tuning) refuses when they are set
_ADAM_ONLY = {name: "it sets a baseline's optimizer; G, D and fine-tuning use Adam, without weight decay"
              for name in ("classifier_optimizer", "momentum", "weight_decay")}

# settings that belong to one method: every other method refuses them when they are set
_OWNED = {"beta": ("trades", "it is TRADES' weight"), "nfgsm_noise": ("n-fgsm", "it is N-FGSM's start noise"),
          "fgsm_clip_start": ("fgsm-rs", "it is FGSM-RS's start")}


def _robgan_check(config):
    if config.generator:
        raise cfg.ConfigError("--generator is for the baselines' --gen-ratio; Rob-GAN mixes in its own generator")
    _synthetic_check(config)
    _gan_check(config)


def _gan_check(config):
    try:
        diffaugment.parse(config.diffaugment)
    except ValueError as e:
        raise cfg.ConfigError(f"--diffaugment {config.diffaugment!r}: {e}") from None


def _synthetic_check(config):
    if config.synthetic and config.gen_ratio:
        raise cfg.ConfigError("--synthetic and --gen-ratio both mix generated images in: use one")


ROBGAN = Method(
    name="robgan",
    summary="Rob-GAN (Liu & Hsieh 2019): co-training of G and the two-headed D on attacked images, then "
            "fine-tuning of D's classifier, with a catastrophic-overfitting guard",
    stages=(Stage("cotrain", RobGAN, _cotrain, epochs=lambda c: c.epochs, batches_per_step=lambda c: c.n_dis,
                  generator="trained"),
            Stage("finetune", FineTuner, _finetune, epochs=lambda c: c.finetune_epochs, warms_up=False,
                  generator="frozen", synthetic=True, **GUARDED)),
    optimizers=_robgan_optimizers,
    trains_generator=True,
    unused=_ADAM_ONLY,
    check=_robgan_check,
)


# A plain conditional GAN: Rob-GAN's co-training with no attack, the control for generated data.

_NO_ATTACK = {name: "a plain conditional GAN attacks no image in training" for name in
              ("pgd_steps", "pgd_step_size", "eps_warmup_epochs", "real_rf_input")}
_NO_FINETUNING = {name: "a plain conditional GAN has no fine-tuning" for name in
                  ("lam", "finetune_lr", "finetune_epochs", "gen_ratio", "generator", "synthetic")}

CGAN = Method(
    name="cgan",
    summary="a plain conditional GAN with Rob-GAN's G, D and losses, trained on clean images (the control "
            "for Rob-GAN as a source of training data)",
    stages=(Stage("cotrain", ConditionalGAN, _cotrain, epochs=lambda c: c.epochs, batches_per_step=lambda c: c.n_dis,
                  generator="trained"),),
    optimizers=_gan_optimizers,
    trains_generator=True,
    fixed=lambda config: dict(finetune_epochs=0),
    unused={**_NO_ATTACK, **_NO_FINETUNING, **_ADAM_ONLY},
    check=_gan_check,
)


# Baselines: the same classifier trained alone in one stage.

def _classifier_stage(**extra):
    def build(step_class, parts, optimizers, config, warmup):
        settings = {**attack_settings(config, warmup), **{k: f(config) for k, f in extra.items()}}
        model = step_class(parts.classifier, parts.generator, gen_ratio=config.gen_ratio, average=parts.average,
                           weight_decay=config.weight_decay, **settings)
        return _compile(model, config, optimizer=optimizers["c_optimizer"])
    return build


def _classifier_optimizers(schedule):
    def optimizers(config, parts, steps):
        return dict(c_optimizer=classifier_optimizer(config, schedule(config.d_lr, max(1, steps["train"])),
                                                     parts.classifier.trainable_variables))
    return optimizers


def _baseline_check(config):
    if config.gen_ratio and not config.generator:
        raise cfg.ConfigError(f"--gen-ratio with --method {config.method} needs --generator <generator.keras>")
    _synthetic_check(config)


_GAN_ONLY = {name: "it sets Rob-GAN's generator, discriminator or fine-tuning; a baseline trains a classifier "
                   "alone" for name in ("spectral_norm", "n_dis", "real_rf_input", "fake_class_weight", "gan_loss",
                                        "g_class_weight", "diffaugment", "projection", "g_ema_decay", "lam",
                                        "g_lr", "finetune_lr", "finetune_epochs")}
_BASELINE_FIXED = dict(spectral_norm="head", n_dis=1, finetune_epochs=0)  # a baseline's D: no spectral norm


def _baseline(name, summary, step_class, schedule=keras.optimizers.schedules.CosineDecay, extra=None,
              fixed=None, unused=None, guarded=False, **kwargs):
    """A classifier trained alone: one "train" stage of `step_class` (with `extra` settings from
    the config), its optimizer (Adam or SGD) under `schedule`, the GAN-only settings fixed or refused, and (`guarded`)
    the catastrophic-overfitting guard."""
    stage = Stage("train", step_class, _classifier_stage(**(extra or {})), epochs=lambda c: c.epochs,
                  synthetic=True, **(GUARDED if guarded else {}))
    return Method(name=name, summary=summary, stages=(stage,), optimizers=_classifier_optimizers(schedule),
                  fixed=lambda config: {**_BASELINE_FIXED, **(fixed(config) if fixed else {})},
                  unused={**_GAN_ONLY, **(unused or {})}, check=_baseline_check, **kwargs)


METHODS = {m.name: m for m in (
    ROBGAN,
    CGAN,
    _baseline("pgd-at", "PGD adversarial training (Madry et al. 2018)", AdversarialTraining),
    _baseline("fgsm-rs", "FGSM with a random start (Wong et al. 2020): one step of 1.25 eps, cyclic learning "
                         "rate, catastrophic-overfitting guard on a held-out batch", RandomStartFGSM,
              extra={"clip_start": lambda c: c.fgsm_clip_start},
              schedule=CyclicLR, fixed=lambda c: dict(pgd_steps=1, pgd_step_size=1.25 * c.eps),
              unused={"pgd_steps": "its one step is 1.25 x eps",
                      "pgd_step_size": "its one step is 1.25 x eps"},
              guarded=True, held_out=lambda c: c.batch_size,
              # the reference code's MNIST recipe: Adam (beta_1 0.9) at a cyclic peak of 5e-3 over 10 epochs of
              # 100 images, no eps warm-up, the start unclipped (BENCHMARKS.md: 89.8% autoattack in 9.5 minutes)
              defaults={"mnist": dict(batch_size=100, d_lr=5e-3, beta_1=0.9, eps_warmup_epochs=0.0, epochs=10,
                                      fgsm_clip_start=False)}),
    _baseline("n-fgsm", "N-FGSM (de Jorge et al. 2022): one step of eps from noise uniform in ±k eps (k = 2), not "
                        "projected back to the eps-ball; catastrophic-overfitting guard on a held-out batch", NoiseFGSM,
              extra={"noise": lambda c: c.nfgsm_noise}, fixed=lambda c: dict(pgd_steps=1, pgd_step_size=c.eps),
              unused={"pgd_steps": "its one step is eps", "pgd_step_size": "its one step is eps"},
              guarded=True, held_out=lambda c: c.batch_size),
    _baseline("trades", "TRADES (Zhang et al. 2019): CE on clean images + beta KL to the attacked ones", TRADES,
              extra={"beta": lambda c: c.beta}),
)}


def _why_unused(spec, name):
    """Why the method `spec` refuses the setting `name` (another method's own, or one it does not use), or None."""
    owner, why = _OWNED.get(name, (spec.name, None))
    return why if owner != spec.name else spec.unused.get(name)


def get(name):
    if name not in METHODS:
        raise cfg.ConfigError(f"--method {name!r}: use one of {', '.join(METHODS)}")
    return METHODS[name]


def config_for(dataset, method="robgan", settings=None, explicit=()):
    """The run's Config: Config's defaults, then the dataset's, the method's for the dataset,
    `settings` (--mixed-precision auto resolved for this machine), and what the method fixes;
    checked (ranges, then the method's own rules). Settings named in `explicit` (set by the user)
    that the method does not use are refused."""
    spec = get(method)
    unknown = sorted(set(settings or {}) - {f.name for f in dataclasses.fields(cfg.Config)})
    if unknown:
        raise cfg.ConfigError(f"unknown settings: {', '.join(unknown)}")
    for name in explicit:
        why = _why_unused(spec, name)
        if why:
            raise cfg.ConfigError(f"{cfg.flag(name)} does not apply to --method {method}: {why}")
    values = {**cfg.dataset_defaults(dataset), **spec.defaults.get(dataset, {}), **(settings or {}),
              "dataset": dataset, "method": method}
    config = cfg.Config(**values)
    config = config.replace(mixed_precision=distribute.resolve_precision(config.mixed_precision))
    config = config.replace(**spec.fixed(config))
    cfg.check(config)
    if "val_every" in explicit and not config.val_examples:
        raise cfg.ConfigError("--val-every needs --val-examples (the validation split it checks)")
    if "momentum" in explicit and config.classifier_optimizer != "sgd":
        raise cfg.ConfigError("--momentum needs --classifier-optimizer sgd")
    for name in ("beta_1", "beta_2"):
        if name in explicit and config.classifier_optimizer == "sgd":
            raise cfg.ConfigError(f"{cfg.flag(name)} is Adam's; --classifier-optimizer sgd has --momentum")
    spec.check(config)
    return config


def normalise(config):
    """A saved Config with what its method fixes applied (runs written before a setting was fixed)."""
    return config.replace(**get(config.method).fixed(config))
