"""Rob-GAN robust training in Keras 3 / TensorFlow.

Importing the package registers its custom layers, so `keras.saving.load_model` reads the
run directory's `.keras` files with no extra arguments after `import robgan_tf`. It imports
TensorFlow through `quiet`: INFO lines hidden unless TF_CPP_MIN_LOG_LEVEL says otherwise.
"""

from robgan_tf import quiet as _quiet

_quiet.import_tensorflow()

from robgan_tf import models  # noqa: E402, F401  (registers the custom layers)
