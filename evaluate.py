"""Robustness evaluation: python evaluate.py --model checkpoints/mnist-robgan --data-dir ../shared/data"""

import sys

from robgan_tf.cli.evaluate import main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
