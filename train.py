"""Train a robust classifier with Rob-GAN: python train.py --dataset mnist --data-dir ../shared/data"""

import sys

from robgan_tf.cli.train import config_from, main, parser  # noqa: F401  (tests call them)

if __name__ == "__main__":
    sys.exit(main())
