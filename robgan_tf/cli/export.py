"""Export a run's robust classifier for TensorFlow Serving: python export.py --model RUN_DIR --out exports"""

import argparse
import os
import sys


from robgan_tf import rundir
from robgan_tf.export import export_classifier


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="run directory written by train.py")
    p.add_argument("--out", default="exports", help="TF Serving model base path (default: exports)")
    p.add_argument("--name", help="model name (default: <dataset>_<method>, e.g. mnist_robgan, mnist_pgd_at)")
    p.add_argument("--version", type=int, help="version number (default: the next free one)")
    args = p.parse_args(argv)
    classifier_path = os.path.join(args.model, rundir.CLASSIFIER)
    if not os.path.isfile(classifier_path):
        print(f"error: {classifier_path} not found; --model must be a run directory of train.py", file=sys.stderr)
        return 1
    try:
        config, class_names = rundir.read_config(args.model)
        classifier = rundir.load_model(classifier_path)
        name = args.name or f"{config.dataset}_{config.method.replace('-', '_')}"
        path = export_classifier(classifier, class_names, args.out, name, args.version)
    except (rundir.RunDirError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"exported {classifier_path} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
