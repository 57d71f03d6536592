"""The run directory: the contract between train.py and everything that reads a run.

A run directory holds `config.json`, the `.keras` models, `samples/epoch_NNN.png`,
`metrics.csv` (one row per epoch; columns: the method's, `Method.metric_columns`), `metrics.json`,
TensorBoard `logs/`, the step-based training checkpoint `ckpt/`; when a catastrophic-overfitting
guard (a fast method's, Rob-GAN's fine-tuning's) stopped it, `early_stop.json`; with a validation
split, `best.json`, `classifier_best.keras`, `classifier_last.keras` and `curves.png`.
"""

import contextlib
import csv
import dataclasses
import json
import os

import tensorflow as tf

from robgan_tf.config import Config

CONFIG = "config.json"
GENERATOR = "generator.keras"
DISCRIMINATOR = "discriminator.keras"
CLASSIFIER = "classifier.keras"
BEST_CLASSIFIER = "classifier_best.keras"  # the best epoch's on the validation split (best.json says which)
LAST_CLASSIFIER = "classifier_last.keras"  # the last epoch's, when classifier.keras is the best one
BEST = "best.json"
CURVES = "curves.png"
REFERENCE_CLASSIFIER = "gan_test_classifier.keras"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
EARLY_STOP = "early_stop.json"
SAMPLES = "samples"
LOGS = "logs"
CHECKPOINTS = "ckpt"

# every metrics.csv row's (the rest is the method's, Method.metric_columns); resumed_at_batch k marks an epoch
# resumed after a kill at batch k: its metrics and seconds cover its batches from k on only (else empty)
ROW_KEYS = ("stage", "epoch", "seconds", "resumed_at_batch")


class RunDirError(ValueError):
    """The run directory cannot be used as asked (other settings, unreadable checkpoint)."""


def read_config(out_dir):
    """The run's settings and class names from its config.json: (Config, class_names). The one
    reader of config.json; a setting added since the run was written takes the value that keeps
    the run's behaviour (SINCE)."""
    path = os.path.join(out_dir, CONFIG)
    if not os.path.isfile(path):
        raise RunDirError(f"{out_dir} is not a run directory of train.py (it has no {CONFIG})")
    with open(path) as f:
        saved = json.load(f)
    names = {f.name for f in dataclasses.fields(Config)}
    values = {**SINCE, **{k: v for k, v in saved.items() if k in names}}
    return Config(**values), saved.get("class_names")


SINCE = {}  # settings added after runs were first written: {name: the value runs before it behaved as}


def prepare(out_dir, config, class_names, overwrite=False, normalise=lambda config: config, data=None):
    """Creates out_dir for `config`, or checks that an existing run used the same settings
    (the saved ones passed through `normalise` first) and the same `data` (Dataset.identity(),
    where the run recorded one)."""
    path = os.path.join(out_dir, CONFIG)
    if overwrite and os.path.isdir(out_dir) and os.listdir(out_dir):
        if not os.path.isfile(path):
            raise RunDirError(f"--overwrite: {out_dir} is not a run directory of train.py (it has no {CONFIG}), so "
                              f"it is left as it is; choose another --out")
        aside = _free_name(out_dir.rstrip(os.sep) + ".replaced")
        os.replace(out_dir, aside)
        print(f"--overwrite: the earlier run in {out_dir} (models, checkpoints, evaluations) was moved to {aside}; "
              f"delete it when you no longer need it")
    if os.path.exists(path):
        saved = normalise(read_config(out_dir)[0]).as_dict()
        current = json.loads(json.dumps(config.as_dict()))
        saved = json.loads(json.dumps(saved))
        diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if diff:
            changes = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff)
            raise RunDirError(f"{out_dir} holds a run with other settings ({changes}); "
                              f"use another --out, or --overwrite to replace it")
        with open(path) as f:
            recorded = json.load(f).get("data")
        if data and recorded and recorded != data:
            raise RunDirError(f"{out_dir} was trained on other data ({recorded}, now {data}); resume it with the "
                              f"same --data-dir, or use another --out, or --overwrite to replace it")
    else:
        os.makedirs(os.path.join(out_dir, SAMPLES), exist_ok=True)
        _write_json(path, {**config.as_dict(), "class_names": list(class_names), **({"data": data} if data else {})})


def _free_name(path):
    """path, or path-2, path-3, ...: the first that does not exist."""
    candidates = (path if n == 1 else f"{path}-{n}" for n in range(1, 10_000))
    return next(p for p in candidates if not os.path.exists(p))


@contextlib.contextmanager
def _replaced(path, newline=None):
    """A file to write that replaces `path` atomically once written (a crash leaves the old one)."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline=newline) as f:
        yield f
    os.replace(tmp, path)


def _write_json(path, obj):
    with _replaced(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True)


def save_model(model, out_dir, name):
    """Saves a Keras model as out_dir/name atomically (a crash never leaves half a file)."""
    tmp = os.path.join(out_dir, "tmp_" + name)
    model.save(tmp)
    os.replace(tmp, os.path.join(out_dir, name))


def load_model(path):
    """A .keras model, or a RunDirError saying in one line that the file is missing or unreadable."""
    import keras

    if not os.path.isfile(path):
        raise RunDirError(f"no model file {path}")
    try:
        return keras.saving.load_model(path)
    except (ValueError, OSError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunDirError(f"{path} exists but cannot be read as a Keras model (damaged or not a .keras file: "
                          f"{first[:200]})") from None


def write_metrics_json(out_dir, metrics):
    _write_json(os.path.join(out_dir, METRICS_JSON), metrics)


def read_metrics_json(out_dir):
    with open(os.path.join(out_dir, METRICS_JSON)) as f:
        return json.load(f)


def write_early_stop(out_dir, fired):
    """Records a catastrophic-overfitting stop (epoch, step, accuracies, stage) with the run."""
    _write_json(os.path.join(out_dir, EARLY_STOP), fired)


def read_early_stop(out_dir):
    """The recorded early stop, or None."""
    return _read_json_if_any(os.path.join(out_dir, EARLY_STOP))


def write_best(out_dir, best):
    """Records the best epoch on the validation split (its number, stage and accuracies)."""
    _write_json(os.path.join(out_dir, BEST), best)


def read_best(out_dir):
    """The recorded best epoch, or None."""
    return _read_json_if_any(os.path.join(out_dir, BEST))


def _read_json_if_any(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_metrics_row(out_dir, row, columns):
    """Writes one epoch's row of metrics.csv with these `columns`, replacing the row of the same
    stage and epoch if there is one (an epoch redone after a kill); keys outside `columns` are an
    error (nothing is dropped silently), missing ones stay empty. A file written with other columns
    (an older version's order, or fewer) keeps its own order, extended by the new columns. The file
    is replaced atomically."""
    unknown = set(row) - set(columns)
    if unknown:
        raise KeyError(f"metrics not in the schema: {sorted(unknown)}")
    path = os.path.join(out_dir, METRICS_CSV)
    rows, header = [], list(columns)
    if os.path.exists(path):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or ())
            rows = [r for r in reader if (r["stage"], r["epoch"]) != (str(row["stage"]), str(row["epoch"]))]
        header += [c for c in columns if c not in header]
    with _replaced(path, newline="") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(rows + [row])


def read_metrics_rows(out_dir):
    """metrics.csv's epochs as dicts of strings (empty where a stage has no such metric)."""
    with open(os.path.join(out_dir, METRICS_CSV)) as f:
        return list(csv.DictReader(f))


class Progress:
    """Where training stands, as checkpointed variables: the stage (an index into the method's
    stages; their number means done), epochs done in it, batches done in the epoch."""

    def __init__(self):
        self.stage = tf.Variable(0, dtype=tf.int64, trainable=False, name="stage")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.batch = tf.Variable(0, dtype=tf.int64, trainable=False, name="batch")

    def as_dict(self):
        return {"stage": self.stage, "epoch": self.epoch, "batch": self.batch}

    @property
    def stage_index(self):
        return int(self.stage.numpy())

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
    latest = _latest_checkpoint(os.path.join(restore_from or out_dir, CHECKPOINTS))
    if latest:
        try:
            ckpt.restore(latest).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError, IndexError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RunDirError(f"checkpoint {latest} cannot be restored ({first}); "
                              f"rerun with --overwrite to start this run again") from None
    return manager


def _latest_checkpoint(directory):
    """The checkpoint its state file names or, when that file is unreadable or names none but
    checkpoints are on disk, the newest of them (said in one line): a run with progress never
    silently starts over."""
    try:
        latest = tf.train.latest_checkpoint(directory)
    except (tf.errors.OpError, ValueError, UnicodeDecodeError):
        latest = None
    on_disk = sorted(tf.io.gfile.glob(os.path.join(directory, "ckpt-*.index")),
                     key=lambda p: int(os.path.basename(p)[len("ckpt-"):-len(".index")]))
    if latest is None and on_disk:
        latest = on_disk[-1][:-len(".index")]
        print(f"warning: {os.path.join(directory, 'checkpoint')} is unreadable or names no checkpoint; resuming "
              f"from {latest}, the newest checkpoint on disk")
    return latest
