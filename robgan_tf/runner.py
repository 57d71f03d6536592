"""One training run from settings to run directory, final evaluation included.

Rob-GAN runs co-training, then fine-tuning; the baselines (PGD-AT, FGSM-RS, TRADES) train the
same classifier alone in one stage.

Resumable: the checkpoint records the stage, epoch and batch, so rerunning the same settings
after an interruption continues where the last checkpoint left off.
"""

import contextlib
import os
import time

import keras
import tensorflow as tf

from robgan_tf import data, evaluation, models, quality, rundir
from robgan_tf.attacks import default_step_size
from robgan_tf.callbacks import EpochReport, NonFiniteGuard, OverfitGuard, StepCheckpoint
from robgan_tf.training import TRADES, AdversarialTraining, CyclicLR, FineTuner, RobGAN

# Per-dataset defaults. MNIST is sized for a 2-core CPU; CIFAR-10 is the paper-scale model.
DEFAULTS = {
    "mnist": dict(eps=0.3, pgd_steps=10, width=32, g_width=32, depth=3, batch_size=64, epochs=3,
                  finetune_epochs=3, eps_warmup_epochs=1.0, d_lr=1e-3, g_lr=2e-4, finetune_lr=5e-4,
                  augment=False, real_rf_input="clean", fake_class_weight=0.0, n_dis=1, spectral_norm="head",
                  eval_examples=10000),
    "cifar10": dict(eps=8 / 255, pgd_steps=7, width=128, g_width=256, depth=4, batch_size=64, epochs=100,
                    finetune_epochs=10, eps_warmup_epochs=5.0, d_lr=2e-4, g_lr=2e-4, finetune_lr=1e-4,
                    augment=True, real_rf_input="adversarial", fake_class_weight=0.0, n_dis=2, spectral_norm="all",
                    eval_examples=1000),
}
METHODS = ("robgan", "pgd-at", "fgsm-rs", "trades")
COMMON = dict(method="robgan", gen_ratio=0.0, generator=None, beta=6.0, pgd_step_size=None, lam=0.5,
              beta_1=0.5, beta_2=0.999, z_dim=128,
              train_limit=None, seed=0, checkpoint_every=200, distribute="none", xla=False, mixed_precision="none")


def default_config(dataset):
    """All settings for a dataset, its own defaults over the common ones (others take CIFAR-10's)."""
    return {**COMMON, **DEFAULTS.get(dataset, DEFAULTS["cifar10"])}


def make_strategy(name):
    """none: the default strategy; mirrored: all local GPUs; multiworker: the cluster in TF_CONFIG."""
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown --distribute {name!r}: use none, mirrored or multiworker")


@contextlib.contextmanager
def _dtype_policy(name):
    """Layers built inside compute in `name` (e.g. mixed_float16); the global policy is restored."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def worker_dir(strategy, out_dir):
    """Where this process writes: the chief writes the run directory, every other worker of a
    multi-worker cluster its own `workers/<task_id>` inside it."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster:
        return out_dir
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster):
        return out_dir
    return os.path.join(out_dir, "workers", str(task_id))


def train(config, dataset, out_dir, overwrite=False, verbose="auto"):
    """Trains (or resumes, or just reports) the run in out_dir; returns the final metrics."""
    if overwrite and config["distribute"] == "multiworker":  # the chief's rmtree would race the workers
        raise rundir.RunDirError("--overwrite with --distribute multiworker: remove the run directory first")
    strategy = make_strategy(config["distribute"])  # first: multi-worker needs it before other TF ops
    method = config["method"]
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    robgan = method == "robgan"
    if config["gen_ratio"] and not robgan and not config["generator"]:
        raise data.DataError(f"--gen-ratio with --method {method} needs --generator <generator.keras>")
    if method == "fgsm-rs" and config["pgd_step_size"] is not None:
        raise data.DataError("--pgd-step-size does not apply to --method fgsm-rs: its one step is 1.25 x eps")
    if robgan and config["generator"]:
        raise data.DataError("--generator is for the baselines' --gen-ratio; Rob-GAN mixes in its own generator")
    x, y = data.subset(dataset.x_train, dataset.y_train, config["train_limit"], config["seed"])
    if method == "fgsm-rs":  # one batch held out for the catastrophic-overfitting check
        x, y, held_out = x[config["batch_size"]:], y[config["batch_size"]:], (x[:config["batch_size"]],
                                                                                y[:config["batch_size"]])
    batch, n_dis = config["batch_size"], config["n_dis"] if robgan else 1
    if len(y) < batch * n_dis:
        raise data.DataError(f"{len(y)} training images cannot fill one step of --batch-size {batch} "
                             f"x --n-dis {n_dis}; lower them or raise --train-limit")
    main_data = data.TrainData(x, y, batch * n_dis, config["augment"], config["seed"])
    finetune_data = data.TrainData(x, y, batch, config["augment"], config["seed"])
    config = {**config, "class_names": dataset.class_names}
    own_dir = worker_dir(strategy, out_dir)
    rundir.prepare(own_dir, config, overwrite)
    keras.utils.set_random_seed(config["seed"])
    with strategy.scope():
        parts = build(config, dataset, main_data.steps * config["epochs"],
                      finetune_data.steps * config["finetune_epochs"])
    generator, discriminator, classifier = parts["generator"], parts["discriminator"], parts["classifier"]
    optimizers = parts["optimizers"]
    progress = rundir.Progress()
    trainable = dict(discriminator=discriminator, **({"generator": generator} if robgan else {}))
    manager = rundir.checkpoint_manager(own_dir, progress, restore_from=out_dir, **trainable, **optimizers)
    if progress.stage_name == "done":
        print(f"{out_dir} is finished; nothing to train (use --overwrite to train it again).")
        return rundir.read_metrics_json(own_dir)

    def save_models():
        named = [(discriminator, rundir.DISCRIMINATOR), (classifier, rundir.CLASSIFIER)]
        for model, name in named + ([(generator, rundir.GENERATOR)] if generator is not None else []):
            rundir.save_model(model, own_dir, name)

    scorer = None
    if generator is not None:
        scorer = quality.GeneratorQuality(dataset, _reference_classifier(dataset, own_dir, config["seed"]),
                                          seed=config["seed"])
        print(f"GAN-test reference classifier: {scorer.reference_accuracy:.3f} accuracy on real test images")
    stage = _Stage(strategy, progress, manager, save_models, dataset.class_names, own_dir,
                   config["checkpoint_every"], verbose)
    started = time.time()

    if progress.stage_name == "cotrain":
        if not rundir.read_early_stop(own_dir):  # else FGSM-RS's guard stopped it just before a crash
            warmup = round(min(config["eps_warmup_epochs"], config["epochs"]) * main_data.steps * n_dis)
            with strategy.scope():
                model = stage_model("main", parts, config, warmup)
            guards = [OverfitGuard(*held_out, config["eps"], config["seed"],
                                   record=lambda fired: rundir.write_early_stop(own_dir, fired))
                      ] if method == "fgsm-rs" else []
            stage.run(model, main_data, "cotrain" if robgan else "train", config["epochs"], 0,
                      scorer if robgan else None, guards)
        progress.next_stage()
        manager.save()
        if robgan:
            rundir.keep_cotrained(own_dir, manager)
    generator_scores = scorer(generator) if scorer else {}  # G does not change from here on
    if robgan:
        with strategy.scope():
            model = stage_model("finetune", parts, config)
        stage.run(model, finetune_data, "finetune", config["finetune_epochs"], config["epochs"],
                  lambda _: generator_scores)

    save_models()
    metrics = final_metrics(classifier, dataset, config, generator_scores)
    early_stop = rundir.read_early_stop(own_dir)
    metrics.update(method=method, train_seconds_this_session=round(time.time() - started, 1),
                   **({"early_stop": early_stop} if early_stop else {}))
    rundir.write_metrics_json(own_dir, metrics)
    progress.next_stage()
    manager.save()
    gan = (f", GAN-test accuracy {metrics['gan_test_accuracy']:.3f}, sample diversity "
           f"{metrics['sample_diversity']:.2f} of real" if generator_scores else "")
    print(f"clean accuracy {metrics['clean_accuracy']:.4f}, PGD-20 accuracy {metrics['pgd20_accuracy']:.4f} "
          f"(eps={config['eps']:.4g}, {metrics['eval_examples']} test images){gan}")
    warning = quality.collapse_warning(metrics) if generator_scores else None
    if warning:
        print(warning)
    return metrics


def build(config, dataset, main_steps, finetune_steps):
    """The models and optimizers of a run (inside the strategy's scope): D, its classifier, G
    (trained by Rob-GAN, frozen for a baseline's --gen-ratio, else None), and Adam optimizers
    whose schedules span `main_steps` and `finetune_steps`."""
    precision = config["mixed_precision"]
    robgan = config["method"] == "robgan"
    # Spectral norm is a GAN setting: a baseline's classifier has none, and the real/fake head it
    # never trains keeps the default layout, so that runs made before stay loadable.
    spectral_norm = config["spectral_norm"] if robgan else "head"
    with _dtype_policy("float32" if precision == "none" else precision):
        discriminator = models.build_discriminator(dataset.image_shape, dataset.num_classes,
                                                   config["width"], config["depth"], spectral_norm)
        classifier = models.classifier_from(discriminator)
        if robgan:
            generator = models.build_generator(dataset.image_shape, dataset.num_classes,
                                               config["g_width"], config["z_dim"])
        else:
            generator = _frozen_generator(config["generator"], dataset) if config["gen_ratio"] else None

        def adam(lr, variables):
            optimizer = keras.optimizers.Adam(lr, config["beta_1"], config["beta_2"])
            if precision == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(variables)
            return optimizer

        if robgan:  # fine-tuning anneals its learning rate to 0 (cosine) over the whole stage
            optimizers = dict(d_optimizer=adam(config["d_lr"], discriminator.trainable_variables),
                              g_optimizer=adam(config["g_lr"], generator.trainable_variables),
                              ft_optimizer=adam(keras.optimizers.schedules.CosineDecay(
                                  config["finetune_lr"], max(1, finetune_steps)), classifier.trainable_variables))
        else:
            optimizers = dict(c_optimizer=adam(lr_schedule(config["method"], config["d_lr"], max(1, main_steps)),
                                               classifier.trainable_variables))
    return dict(generator=generator, discriminator=discriminator, classifier=classifier, optimizers=optimizers)


def stage_model(stage, parts, config, eps_warmup_steps=0):
    """The compiled train-step model of a stage: "main" (Rob-GAN co-training or the baseline)
    or "finetune" (Rob-GAN's), over the `parts` of `build`."""
    generator, discriminator, classifier = parts["generator"], parts["discriminator"], parts["classifier"]
    optimizers, method = parts["optimizers"], config["method"]
    args = dict(eps=config["eps"], pgd_steps=config["pgd_steps"], pgd_step_size=config["pgd_step_size"],
                seed=config["seed"], attack_jit=config["xla"] and config["distribute"] != "none",
                attack_loss_scale=1024.0 if config["mixed_precision"] == "mixed_float16" else 1.0,
                gen_ratio=config["gen_ratio"])
    jit = config["xla"] and config["distribute"] == "none"
    if stage == "finetune":
        model = FineTuner(generator, discriminator, lam=config["lam"], **args)
        model.compile(optimizer=optimizers["ft_optimizer"], jit_compile=jit)
        return model
    if method == "robgan":
        model = RobGAN(generator, discriminator, fake_class_weight=config["fake_class_weight"], n_dis=config["n_dis"],
                       real_rf_input=config["real_rf_input"], eps_warmup_steps=eps_warmup_steps,
                       **{**args, "gen_ratio": 0.0})  # Rob-GAN mixes generated images in fine-tuning
        model.compile(d_optimizer=optimizers["d_optimizer"], g_optimizer=optimizers["g_optimizer"], jit_compile=jit)
        return model
    if method == "fgsm-rs":
        args.update(pgd_steps=1, pgd_step_size=1.25 * config["eps"])
    if method == "trades":
        model = TRADES(classifier, generator, beta=config["beta"], eps_warmup_steps=eps_warmup_steps, **args)
    else:
        model = AdversarialTraining(classifier, generator, eps_warmup_steps=eps_warmup_steps, **args)
    model.compile(optimizer=optimizers["c_optimizer"], jit_compile=jit)
    return model


def probe_step_seconds(config, dataset, stages=None, steps=50, warmup=3, verbose="auto"):
    """Seconds per training step of each stage of `config` ({"main": s[, "finetune": s]}), or of
    the given `stages` only, as `fit` runs them in training: on the real input pipeline, with the
    progress bar and, for FGSM-RS, its overfitting guard (its first check, which traces the
    attack, falls in the warm-up; with steps = 50 the timed window holds one check, as every 50
    training steps do). The mean of `steps` steps after `warmup`. (Timing the bare step on one
    in-memory batch missed that loop's own cost: FGSM-RS on MNIST probed 56 ms and trained at
    69-77 ms.)"""
    robgan = config["method"] == "robgan"
    parts = build(config, dataset, 1000, 1000)
    seconds = {}
    for stage in stages or (("main", "finetune") if robgan else ("main",)):
        batch = config["batch_size"] * (config["n_dis"] if robgan and stage == "main" else 1)
        callbacks, skip = [], warmup
        if config["method"] == "fgsm-rs":
            callbacks.append(OverfitGuard(dataset.x_train[:batch], dataset.y_train[:batch], config["eps"],
                                          config["seed"]))
            skip += callbacks[0].every
        n = skip + steps + 1
        x, y = dataset.x_train[:batch * n], dataset.y_train[:batch * n]
        batches = data.TrainData(x, y, batch, config["augment"], config["seed"]).epochs(0, 1).repeat()
        ends = []
        callbacks.append(keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(
            time.perf_counter())))
        model = stage_model(stage, parts, config)
        model.fit(batches, epochs=1, steps_per_epoch=n, callbacks=callbacks, verbose=verbose)
        if len(ends) != n:
            raise RuntimeError(f"the {stage} step probe stopped after {len(ends)} of {n} steps")
        seconds[stage] = (ends[-1] - ends[skip]) / steps
    return seconds


def lr_schedule(method, peak, steps):
    """FGSM-RS: the triangular cyclic schedule of Wong et al.; the others: cosine decay to 0."""
    if method == "fgsm-rs":
        return CyclicLR(peak, steps)
    return keras.optimizers.schedules.CosineDecay(peak, steps)


def _frozen_generator(path, dataset):
    """A trained generator.keras whose samples a baseline mixes into its batches."""
    if not os.path.isfile(path):
        raise data.DataError(f"--generator {path}: no such file (a generator.keras from a Rob-GAN run)")
    generator = keras.saving.load_model(path)
    if tuple(generator.output.shape[1:]) != dataset.image_shape:
        raise data.DataError(f"--generator {path} makes {tuple(generator.output.shape[1:])} images, "
                             f"not {dataset.name}'s {dataset.image_shape}")
    generator.trainable = False
    return generator


class _Stage:
    """Runs a stage's remaining epochs with the run's callbacks; after a resume, a partly done
    epoch first finishes on its own, on the very batches it had left."""

    def __init__(self, strategy, progress, manager, save_models, class_names, out_dir, checkpoint_every,
                 verbose):
        self.strategy, self.progress, self.manager, self.save_models = strategy, progress, manager, save_models
        self.class_names, self.out_dir = class_names, out_dir
        self.checkpoint_every, self.verbose = checkpoint_every, verbose

    def run(self, model, train_data, stage, epochs, epoch_offset, quality, extra_callbacks=()):
        guard = NonFiniteGuard([k for k in ("d_loss", "g_loss", "loss") if k in model.metric_names], self.out_dir)
        report = EpochReport(self.out_dir, stage, epoch_offset, model.generator, quality, self.class_names)
        board = keras.callbacks.TensorBoard(os.path.join(self.out_dir, rundir.LOGS, stage))
        steps = train_data.steps

        def fit(first, last, skip=0):
            ckpt = StepCheckpoint(self.manager, self.progress, self.checkpoint_every, steps, self.save_models,
                                  batch_offset=skip)
            self._fit(model, train_data.epochs(first, last, skip), first, last, steps - skip,
                      [guard, ckpt, report, board, *extra_callbacks])

        epoch, done = int(self.progress.epoch.numpy()), int(self.progress.batch.numpy())
        if done and epoch < epochs:
            print(f"resuming {stage} epoch {epoch_offset + epoch + 1} at batch {done}/{steps}")
            fit(epoch, epoch + 1, skip=done)
            epoch += 1
        if epoch < epochs and not model.stop_training:
            fit(epoch, epochs)

    def _fit(self, model, batches, initial_epoch, epochs, steps, callbacks):
        if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            model.fit(batches, initial_epoch=initial_epoch, epochs=epochs, steps_per_epoch=steps,
                      callbacks=callbacks, verbose=self.verbose)
            return
        # Model.fit fails under MultiWorkerMirroredStrategy in Keras 3.15 (keras-team/keras#20585):
        # the same train_step, driven by this loop instead.
        strategy = self.strategy

        @tf.function
        def step(batch):
            logs = strategy.run(model.train_step, args=(batch,))
            return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in logs.items()}

        hooks = keras.callbacks.CallbackList(callbacks, add_progbar=self.verbose != 0, model=model,
                                             verbose=1 if self.verbose == "auto" else self.verbose,
                                             epochs=epochs, steps=steps)
        iterator = iter(strategy.experimental_distribute_dataset(batches))
        hooks.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            model.reset_metrics()
            hooks.on_epoch_begin(epoch)
            for i in range(steps):
                logs = step(next(iterator))
                hooks.on_train_batch_end(i, logs)
                if model.stop_training:
                    break
            hooks.on_epoch_end(epoch, {k: float(v) for k, v in logs.items()})
            if model.stop_training:
                break
        hooks.on_train_end()


def _reference_classifier(dataset, out_dir, seed):
    """The GAN-test classifier, trained once per run directory and kept there."""
    path = os.path.join(out_dir, rundir.REFERENCE_CLASSIFIER)
    if os.path.exists(path):
        return keras.saving.load_model(path)
    print("training the GAN-test reference classifier on real training images ...")
    model = quality.train_reference_classifier(dataset, seed=seed)
    rundir.save_model(model, out_dir, rundir.REFERENCE_CLASSIFIER)
    return model


def final_metrics(classifier, dataset, config, generator_scores):
    """Clean and PGD-20 accuracy on a stratified test subset, with the generator's quality scores."""
    x, y = data.subset(dataset.x_test, dataset.y_test, config["eval_examples"], config["seed"])
    eps = config["eps"]
    logits_fn = evaluation.inference_fn(evaluation.float32_copy(classifier))  # attacks in float32
    settings = evaluation.AttackSettings(seed=config["seed"])  # PGD-20, one restart
    result = evaluation.evaluate(logits_fn, x, y, [eps], attack="pgd", settings=settings, verbose=False)
    return {
        "clean_accuracy": result["clean_accuracy"],
        "pgd20_accuracy": result["robust_accuracy"][settings.pgd_name][evaluation.eps_key(eps)],
        "eps": eps,
        "eval_examples": len(y),
        "eval_split": "test",
        "pgd": {"steps": settings.pgd_steps, "step_size": default_step_size(eps, settings.pgd_steps),
                "restarts": settings.pgd_restarts, "random_start": True, "loss": "cross-entropy"},
        **generator_scores,
    }
