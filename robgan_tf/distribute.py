"""Running the same train step on one device, under MirroredStrategy or MultiWorkerMirroredStrategy."""

import contextlib
import os

import keras
import tensorflow as tf


def make_strategy(name):
    """none: the default strategy; mirrored: all local GPUs; multiworker: the cluster in TF_CONFIG."""
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown --distribute {name!r}: use none, mirrored or multiworker")


def jit_options(config):
    """Where XLA applies with --xla: the whole train step on one device; under a strategy only
    the attack loop, because Keras' jit_compile of a distributed step is not supported."""
    distributed = config.distribute != "none"
    return {"model_jit": config.xla and not distributed, "attack_jit": config.xla and distributed}


CPUINFO = "/proc/cpuinfo"


def bf16_hardware():
    """What computes bfloat16 natively here, in words, or None: with GPUs, every GPU at compute
    capability 8.0 or more; without, a CPU with AVX512-BF16 or AMX-BF16 (Linux's CPUINFO flags)."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability") for gpu in gpus]
        if all(c and tuple(c) >= (8, 0) for c in capabilities):
            return f"GPU compute capability {min(capabilities)[0]}.{min(capabilities)[1]}"
        return None
    try:
        with open(CPUINFO) as f:
            flags = {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return None
    found = sorted(flags & {"avx512_bf16", "amx_bf16"})
    return f"CPU {', '.join(found)}" if found else None


def resolve_precision(name):
    """--mixed-precision as computed: auto is mixed_bfloat16 where bf16_hardware() finds any, else none."""
    if name != "auto":
        return name
    return "mixed_bfloat16" if bf16_hardware() else "none"


@contextlib.contextmanager
def dtype_policy(name):
    """Layers built inside compute in `name` (e.g. mixed_float16); the global policy is restored."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32" if name == "none" else name)
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


def fit(strategy, model, batches, initial_epoch, epochs, steps, callbacks, verbose):
    """`model.fit` over `batches`, or under MultiWorkerMirroredStrategy, where Model.fit fails in
    Keras 3.15 (keras-team/keras#20585), the same train_step driven by a loop of our own with the
    same callbacks and progress bar."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        model.fit(batches, initial_epoch=initial_epoch, epochs=epochs, steps_per_epoch=steps,
                  callbacks=callbacks, verbose=verbose, shuffle=False)
        return

    @tf.function
    def step(batch):
        logs = strategy.run(model.train_step, args=(batch,))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in logs.items()}

    hooks = keras.callbacks.CallbackList(callbacks, add_progbar=verbose != 0, model=model,
                                         verbose=1 if verbose == "auto" else verbose, epochs=epochs, steps=steps)
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
