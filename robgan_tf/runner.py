"""One Rob-GAN run from settings to run directory: co-training, fine-tuning, final evaluation.

Resumable: the checkpoint records the stage, epoch and batch, so rerunning the same settings
after an interruption continues where the last checkpoint left off.
"""

import contextlib
import os
import time

import keras
import tensorflow as tf

from robgan_tf import data, evaluation, models, rundir
from robgan_tf.attacks import default_step_size
from robgan_tf.callbacks import EpochReport, NonFiniteGuard, StepCheckpoint
from robgan_tf.training import FineTuner, RobGAN

# Per-dataset defaults. MNIST is sized for a 2-core CPU; CIFAR-10 is the paper-scale model.
DEFAULTS = {
    "mnist": dict(eps=0.3, pgd_steps=10, width=32, g_width=32, depth=3, batch_size=64, epochs=3,
                  finetune_epochs=3, eps_warmup_epochs=1.0, d_lr=1e-3, g_lr=2e-4, finetune_lr=5e-4,
                  augment=False, real_rf_input="clean", eval_examples=10000),
    "cifar10": dict(eps=8 / 255, pgd_steps=7, width=128, g_width=256, depth=4, batch_size=64, epochs=100,
                    finetune_epochs=10, eps_warmup_epochs=5.0, d_lr=2e-4, g_lr=2e-4, finetune_lr=1e-4,
                    augment=True, real_rf_input="adversarial", eval_examples=1000),
}
COMMON = dict(pgd_step_size=None, lam=0.5, fake_class_weight=0.0, n_dis=1, beta_1=0.5, beta_2=0.999,
              spectral_norm="head", z_dim=128, train_limit=None, seed=0,
              checkpoint_every=200, distribute="none", xla=False, mixed_precision="none")


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
    strategy = make_strategy(config["distribute"])  # first: multi-worker needs it before other TF ops
    x, y = data.subset(dataset.x_train, dataset.y_train, config["train_limit"], config["seed"])
    batch, n_dis = config["batch_size"], config["n_dis"]
    if len(y) < batch * n_dis:
        raise data.DataError(f"{len(y)} training images cannot fill one step of --batch-size {batch} "
                             f"x --n-dis {n_dis}; lower them or raise --train-limit")
    cotrain_data = data.TrainData(x, y, batch * n_dis, config["augment"], config["seed"])
    finetune_data = data.TrainData(x, y, batch, config["augment"], config["seed"])
    config = {**config, "class_names": dataset.class_names}
    own_dir = worker_dir(strategy, out_dir)
    rundir.prepare(own_dir, config, overwrite)
    keras.utils.set_random_seed(config["seed"])
    precision = config["mixed_precision"]
    with strategy.scope(), _dtype_policy("float32" if precision == "none" else precision):
        generator = models.build_generator(dataset.image_shape, dataset.num_classes,
                                           config["g_width"], config["z_dim"])
        discriminator = models.build_discriminator(dataset.image_shape, dataset.num_classes,
                                                   config["width"], config["depth"], config["spectral_norm"])

        def adam(lr):
            optimizer = keras.optimizers.Adam(lr, config["beta_1"], config["beta_2"])
            return keras.optimizers.LossScaleOptimizer(optimizer) if precision == "mixed_float16" else optimizer

        d_opt, g_opt = adam(config["d_lr"]), adam(config["g_lr"])
        # Fine-tuning anneals its learning rate to 0 (cosine) over the whole stage.
        ft_opt = adam(keras.optimizers.schedules.CosineDecay(
            config["finetune_lr"], max(1, finetune_data.steps * config["finetune_epochs"])))
        classifier = models.classifier_from(discriminator)
        d_opt.build(discriminator.trainable_variables)
        g_opt.build(generator.trainable_variables)
        ft_opt.build(classifier.trainable_variables)
    progress = rundir.Progress()
    manager = rundir.checkpoint_manager(own_dir, progress, restore_from=out_dir, generator=generator,
                                        discriminator=discriminator, d_optimizer=d_opt, g_optimizer=g_opt,
                                        ft_optimizer=ft_opt)
    if progress.stage_name == "done":
        print(f"{out_dir} is finished; nothing to train (use --overwrite to train it again).")
        return rundir.read_metrics_json(own_dir)

    def save_models():
        for model, name in ((generator, rundir.GENERATOR), (discriminator, rundir.DISCRIMINATOR),
                            (classifier, rundir.CLASSIFIER)):
            rundir.save_model(model, own_dir, name)

    quality = evaluation.GeneratorQuality(dataset, _reference_classifier(dataset, own_dir, config["seed"]),
                                          seed=config["seed"])
    print(f"GAN-test reference classifier: {quality.reference_accuracy:.3f} accuracy on real test images")
    stage_args = dict(eps=config["eps"], pgd_steps=config["pgd_steps"], pgd_step_size=config["pgd_step_size"],
                      seed=config["seed"], attack_jit=config["xla"] and config["distribute"] != "none",
                      attack_loss_scale=1024.0 if precision == "mixed_float16" else 1.0)
    jit = config["xla"] and config["distribute"] == "none"
    stage = _Stage(strategy, progress, manager, save_models, dataset.class_names, own_dir,
                   config["checkpoint_every"], verbose)
    started = time.time()

    if progress.stage_name == "cotrain":
        warmup = min(config["eps_warmup_epochs"], config["epochs"]) * cotrain_data.steps * n_dis
        with strategy.scope():
            model = RobGAN(generator, discriminator, fake_class_weight=config["fake_class_weight"], n_dis=n_dis,
                           real_rf_input=config["real_rf_input"], eps_warmup_steps=round(warmup), **stage_args)
            model.compile(d_optimizer=d_opt, g_optimizer=g_opt, jit_compile=jit)
        stage.run(model, cotrain_data, "cotrain", config["epochs"], 0, quality)
        progress.next_stage()
        manager.save()
    if progress.stage_name == "finetune":
        with strategy.scope():
            model = FineTuner(generator, discriminator, lam=config["lam"], **stage_args)
            model.compile(optimizer=ft_opt, jit_compile=jit)
        frozen_quality = quality(generator)  # G does not change while fine-tuning
        stage.run(model, finetune_data, "finetune", config["finetune_epochs"], config["epochs"],
                  lambda _: frozen_quality)

    save_models()
    metrics = final_metrics(classifier, generator, dataset, quality, config)
    metrics["train_seconds_this_session"] = round(time.time() - started, 1)
    rundir.write_metrics_json(own_dir, metrics)
    progress.next_stage()
    manager.save()
    print(f"clean accuracy {metrics['clean_accuracy']:.4f}, PGD-20 accuracy {metrics['pgd20_accuracy']:.4f} "
          f"(eps={config['eps']:.4g}, {metrics['eval_examples']} test images), GAN-test accuracy "
          f"{metrics['gan_test_accuracy']:.3f}, sample diversity {metrics['sample_diversity']:.2f} of real")
    warning = evaluation.collapse_warning(metrics)
    if warning:
        print(warning)
    return metrics


class _Stage:
    """Runs a stage's remaining epochs with the run's callbacks; after a resume, a partly done
    epoch first finishes on its own, on the very batches it had left."""

    def __init__(self, strategy, progress, manager, save_models, class_names, out_dir, checkpoint_every,
                 verbose):
        self.strategy, self.progress, self.manager, self.save_models = strategy, progress, manager, save_models
        self.class_names, self.out_dir = class_names, out_dir
        self.checkpoint_every, self.verbose = checkpoint_every, verbose

    def run(self, model, train_data, stage, epochs, epoch_offset, quality):
        guard = NonFiniteGuard([k for k in ("d_loss", "g_loss", "loss") if k in model.metric_names], self.out_dir)
        report = EpochReport(self.out_dir, stage, epoch_offset, model.generator, quality, self.class_names)
        board = keras.callbacks.TensorBoard(os.path.join(self.out_dir, rundir.LOGS, stage))
        steps = train_data.steps

        def fit(first, last, skip=0):
            ckpt = StepCheckpoint(self.manager, self.progress, self.checkpoint_every, steps, self.save_models,
                                  batch_offset=skip)
            self._fit(model, train_data.epochs(first, last, skip), first, last, steps - skip,
                      [guard, ckpt, report, board])

        epoch, done = int(self.progress.epoch.numpy()), int(self.progress.batch.numpy())
        if done and epoch < epochs:
            print(f"resuming {stage} epoch {epoch_offset + epoch + 1} at batch {done}/{steps}")
            fit(epoch, epoch + 1, skip=done)
            epoch += 1
        if epoch < epochs:
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
            hooks.on_epoch_end(epoch, {k: float(v) for k, v in logs.items()})
        hooks.on_train_end()


def _reference_classifier(dataset, out_dir, seed):
    """The GAN-test classifier, trained once per run directory and kept there."""
    path = os.path.join(out_dir, rundir.REFERENCE_CLASSIFIER)
    if os.path.exists(path):
        return keras.saving.load_model(path)
    print("training the GAN-test reference classifier on real training images ...")
    model = evaluation.train_reference_classifier(dataset, seed=seed)
    rundir.save_model(model, out_dir, rundir.REFERENCE_CLASSIFIER)
    return model


def final_metrics(classifier, generator, dataset, quality, config):
    """Clean and PGD-20 accuracy on a stratified test subset, and generator quality."""
    x, y = data.subset(dataset.x_test, dataset.y_test, config["eval_examples"], config["seed"])
    eps = config["eps"]
    return {
        "clean_accuracy": evaluation.accuracy(classifier, x, y),
        "pgd20_accuracy": evaluation.pgd_accuracy(classifier, x, y, eps, steps=20, seed=config["seed"]),
        "eps": eps,
        "eval_examples": len(y),
        "eval_split": "test",
        "pgd": {"steps": 20, "step_size": default_step_size(eps, 20), "restarts": 1, "random_start": True,
                "loss": "cross-entropy"},
        **quality(generator),
    }
