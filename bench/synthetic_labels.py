"""How many labels of a synthetic set (sample.py's .npz) are right: the GAN-test reference CNN
(trained on real training images, as in the GAN-test score) classifies every image, and the
agreement with the stored label is printed overall and per class, and written as JSON.

    python bench/synthetic_labels.py /work/study/mnist-1000-30/robgan-de-half-filtered-data.npz \
        --dataset mnist --json bench/results/synthetic_labels-mnist-1000-30.json
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from robgan_tf import data, quality  # noqa: E402
from robgan_tf.evaluation import accuracy  # noqa: E402


def agreement(classifier, x, y, num_classes):
    """Overall and per-class fraction of the labels `y` that `classifier` gives the images `x`."""
    per_class = [accuracy(classifier, x[y == c], y[y == c]) if np.any(y == c) else None for c in range(num_classes)]
    return accuracy(classifier, x, y), per_class


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("synthetic", help="a .npz with x (uint8 NHWC) and y, as sample.py writes")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=os.path.join("..", "shared", "data"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="where to write the numbers")
    args = p.parse_args(argv)
    with np.load(args.synthetic) as f:
        x, y = f["x"], f["y"].astype(np.int32)
    dataset = data.load(args.dataset, args.data_dir)
    reference = quality.train_reference_classifier(dataset, seed=args.seed, verbose=0)
    real = accuracy(reference, dataset.x_test, dataset.y_test.astype(np.int32))
    overall, per_class = agreement(reference, x, y, dataset.num_classes)
    print(f"{args.synthetic}: {len(y)} images; the reference CNN agrees with {100 * overall:.1f}% of their labels "
          f"(with {100 * real:.1f}% of the real test images')\n")
    print("| class | images | labels the reference CNN agrees with % |\n|---|---|---|")
    for c, share in enumerate(per_class):
        print(f"| {dataset.class_names[c]} | {int(np.sum(y == c))} | "
              f"{'–' if share is None else f'{100 * share:.1f}'} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"synthetic": args.synthetic, "dataset": args.dataset, "images": int(len(y)),
                       "agreement": overall, "per_class": per_class, "reference_on_real_test": real}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
