"""The run directory: the contract between train.py and everything that reads a run.

A run directory holds `config.json`, the three `.keras` models, `samples/epoch_NNN.png`,
`metrics.csv` (columns: METRICS_COLUMNS), `metrics.json`, TensorBoard `logs/`, the
step-based training checkpoint `ckpt/`, for Rob-GAN a copy of it at the end of co-training in
`cotrained/`, and, when FGSM-RS's guard stopped it, `early_stop.json`.
"""

import csv
import json
import os
import shutil

import tensorflow as tf

CONFIG = "config.json"
GENERATOR = "generator.keras"
DISCRIMINATOR = "discriminator.keras"
CLASSIFIER = "classifier.keras"
REFERENCE_CLASSIFIER = "gan_test_classifier.keras"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
EARLY_STOP = "early_stop.json"
SAMPLES = "samples"
LOGS = "logs"
CHECKPOINTS = "ckpt"
COTRAINED = "cotrained"

METRICS_COLUMNS = (
    "stage", "epoch", "seconds",
    "d_loss", "g_loss", "adv_acc", "fake_acc", "rf_acc",  # co-training
    "loss", "fake_adv_acc",  # fine-tuning
    "eps", "gan_test_accuracy", "sample_diversity", "min_class_diversity",
)

STAGES = ("cotrain", "finetune", "done")


class RunDirError(ValueError):
    """The run directory cannot be used as asked (other settings, unreadable checkpoint)."""


def prepare(out_dir, config, overwrite=False):
    """Creates out_dir for `config`, or checks that an existing run used the same settings."""
    path = os.path.join(out_dir, CONFIG)
    if overwrite and os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        current = json.loads(json.dumps(config))
        diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if diff:
            changes = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff)
            raise RunDirError(f"{out_dir} holds a run with other settings ({changes}); "
                              f"use another --out, or --overwrite to replace it")
    else:
        os.makedirs(os.path.join(out_dir, SAMPLES), exist_ok=True)
        _write_json(path, config)


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def save_model(model, out_dir, name):
    """Saves a Keras model as out_dir/name atomically (a crash never leaves half a file)."""
    tmp = os.path.join(out_dir, "tmp_" + name)
    model.save(tmp)
    os.replace(tmp, os.path.join(out_dir, name))


def write_metrics_json(out_dir, metrics):
    _write_json(os.path.join(out_dir, METRICS_JSON), metrics)


def read_metrics_json(out_dir):
    with open(os.path.join(out_dir, METRICS_JSON)) as f:
        return json.load(f)


def write_early_stop(out_dir, fired):
    """Records FGSM-RS's catastrophic-overfitting stop (step and accuracies) with the run."""
    _write_json(os.path.join(out_dir, EARLY_STOP), fired)


def read_early_stop(out_dir):
    """The recorded early stop, or None."""
    path = os.path.join(out_dir, EARLY_STOP)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def append_metrics_row(out_dir, row):
    """Appends one epoch to metrics.csv; unknown keys are an error, missing ones stay empty."""
    unknown = set(row) - set(METRICS_COLUMNS)
    if unknown:
        raise KeyError(f"metrics not in the schema: {sorted(unknown)}")
    path = os.path.join(out_dir, METRICS_CSV)
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, METRICS_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def read_metrics_rows(out_dir):
    """metrics.csv's epochs as dicts of strings (empty where a stage has no such metric)."""
    with open(os.path.join(out_dir, METRICS_CSV)) as f:
        return list(csv.DictReader(f))


class Progress:
    """Where training stands, as checkpointed variables: stage, epochs done in it, batches done."""

    def __init__(self):
        self.stage = tf.Variable(0, dtype=tf.int64, trainable=False, name="stage")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.batch = tf.Variable(0, dtype=tf.int64, trainable=False, name="batch")

    def as_dict(self):
        return {"stage": self.stage, "epoch": self.epoch, "batch": self.batch}

    @property
    def stage_name(self):
        return STAGES[int(self.stage.numpy())]

    def next_stage(self):
        self.stage.assign_add(1)
        self.epoch.assign(0)
        self.batch.assign(0)


def checkpoint_manager(out_dir, progress, restore_from=None, **trackables):
    """An atomic, step-based checkpoint of models, optimizers and progress in out_dir.

    Restores the latest checkpoint of `restore_from` (default out_dir): in a multi-worker run
    every worker saves its own copy but all restore the chief's.
    """
    ckpt = tf.train.Checkpoint(**trackables, **progress.as_dict())
    manager = tf.train.CheckpointManager(ckpt, os.path.join(out_dir, CHECKPOINTS), max_to_keep=2)
    latest = tf.train.latest_checkpoint(os.path.join(restore_from or out_dir, CHECKPOINTS))
    if latest:
        try:
            ckpt.restore(latest).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError, IndexError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RunDirError(f"checkpoint {latest} cannot be restored ({first}); "
                              f"rerun with --overwrite to start this run again") from None
    return manager


def keep_cotrained(out_dir, manager):
    """Saves `manager`'s checkpoint (Rob-GAN at the end of co-training) once more, in
    out_dir/cotrained, so that other fine-tunings can start from it (`start_from_cotrained`)."""
    final = os.path.join(out_dir, COTRAINED)
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tf.train.CheckpointManager(manager.checkpoint, tmp, max_to_keep=1).save()
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def start_from_cotrained(source_dir, out_dir):
    """Starts a new Rob-GAN run in out_dir where source_dir's co-training ended: its `cotrained/`
    checkpoint becomes out_dir's latest, with the co-training rows of its metrics.csv, its samples
    and its GAN-test reference classifier. Training out_dir then only fine-tunes."""
    kept = os.path.join(source_dir, COTRAINED)
    index = tf.io.gfile.glob(os.path.join(kept, "*.index"))
    if len(index) != 1:
        raise RunDirError(f"{source_dir} has no checkpoint from the end of its co-training ({kept})")
    if os.path.exists(os.path.join(out_dir, CONFIG)):
        raise RunDirError(f"{out_dir} already holds a run")
    rows = [r for r in read_metrics_rows(source_dir) if r["stage"] == "cotrain"]
    os.makedirs(os.path.join(out_dir, SAMPLES), exist_ok=True)
    for row in rows:
        name = f"epoch_{int(row['epoch']):03d}.png"
        if os.path.exists(os.path.join(source_dir, SAMPLES, name)):
            shutil.copy2(os.path.join(source_dir, SAMPLES, name), os.path.join(out_dir, SAMPLES, name))
    if os.path.exists(os.path.join(source_dir, REFERENCE_CLASSIFIER)):
        shutil.copy2(os.path.join(source_dir, REFERENCE_CLASSIFIER), out_dir)
    if os.path.exists(os.path.join(out_dir, METRICS_CSV)):  # from an interrupted start
        os.remove(os.path.join(out_dir, METRICS_CSV))
    for row in rows:
        append_metrics_row(out_dir, row)
    checkpoints = os.path.join(out_dir, CHECKPOINTS)
    os.makedirs(checkpoints, exist_ok=True)
    for name in sorted(os.listdir(kept), key=lambda name: name == "checkpoint"):  # the run starts there
        shutil.copy2(os.path.join(kept, name), checkpoints)  # once its latest-checkpoint file is copied
