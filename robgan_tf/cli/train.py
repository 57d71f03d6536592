"""Train a robust classifier with Rob-GAN: python train.py --dataset mnist --data-dir ../shared/data"""

import argparse
import dataclasses
import os
import signal
import sys
import threading

from robgan_tf import config as cfg
from robgan_tf import data, methods, rundir, trainer
from robgan_tf.callbacks import TrainingDiverged

FIELDS = {f.name: f for f in dataclasses.fields(cfg.Config)}


def _default_text(name):
    default = FIELDS[name].default
    return cfg.describe_default(name, {"mnist": cfg.PER_DATASET["mnist"].get(name, default),
                                       "cifar10 and others": default})


def parser():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", help="folder with <dataset>_train.npz and <dataset>_test.npz "
                                      "(arrays x uint8 NHWC, y integer labels); without it, tensorflow_datasets")
    p.add_argument("--tfds-dir", help="tensorflow_datasets data_dir")
    p.add_argument("--out", help="run directory (default: checkpoints/<dataset>-<method>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    methods_help = "; ".join(f"{m.name}: {m.summary}" for m in methods.METHODS.values())
    cfg.add_arguments(p, cfg.Config, _default_text, choices={"method": tuple(methods.METHODS)})
    for action in p._actions:  # the method list, from the registry
        if action.dest == "method":
            action.help = f"{methods_help} (default: robgan)"
    return p


def config_from(args):
    """The run's Config from parsed arguments; what they set explicitly is checked against the method."""
    settings = cfg.given(args, cfg.Config)
    dataset = settings.pop("dataset", FIELDS["dataset"].default)
    method = settings.pop("method", FIELDS["method"].default)
    return methods.config_for(dataset, method, settings, explicit=settings)


class Stopped(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is."""


def _stop(signum, frame):
    raise Stopped()


def main(argv=None):
    args = parser().parse_args(argv)
    out = None
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if on_main_thread else None
    try:
        config = config_from(args)
        out = args.out or os.path.join("checkpoints", f"{config.dataset}-{config.method}")
        dataset = data.load(config.dataset, args.data_dir, args.tfds_dir)
        trainer.train(config, dataset, out, overwrite=args.overwrite)
    except (cfg.ConfigError, data.DataError, rundir.RunDirError, TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        where = f" from the last checkpoint in {os.path.join(out, rundir.CHECKPOINTS)}" if out else ""
        print(f"\n{'terminated' if isinstance(e, Stopped) else 'interrupted'}; rerun the same command to resume"
              f"{where}", file=sys.stderr)
        return 143 if isinstance(e, Stopped) else 130
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
