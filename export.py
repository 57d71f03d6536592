"""Export a run's robust classifier for TensorFlow Serving: python export.py --model RUN_DIR --out exports"""

import sys

from robgan_tf.cli.export import main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
