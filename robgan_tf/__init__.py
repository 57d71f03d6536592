"""Rob-GAN robust training in Keras 3 / TensorFlow.

Importing the package registers its custom layers, so `keras.saving.load_model` reads the
run directory's `.keras` files with no extra arguments after `import robgan_tf`.
"""

from robgan_tf import models  # noqa: F401  (registers the custom layers)
