"""Make a generated training set: python sample.py --generator checkpoints/mnist-robgan --n 50000 --out gen.npz"""

import sys

from robgan_tf.cli.sample import main

if __name__ == "__main__":
    sys.exit(main())
