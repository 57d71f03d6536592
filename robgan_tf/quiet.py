"""Importing TensorFlow without the start-up lines a user cannot act on.

While it loads, before it reads TF_CPP_MIN_LOG_LEVEL, TensorFlow prints INFO lines (the oneDNN
banner, "Could not find cuda drivers", absl's "All log messages before absl::InitializeLog()"),
twice, as two of its libraries log on their own. On a machine with no NVIDIA device, its first
look for GPUs logs "failed call to cuInit" as an ERROR. `import_tensorflow` sets
TF_CPP_MIN_LOG_LEVEL to 1 unless it is set (INFO hidden; WARNING and ERROR shown), then imports
TensorFlow and looks for GPUs with stderr caught, and passes on every line but those.
TF_CPP_MIN_LOG_LEVEL=0 shows them all.
"""

import contextlib
import glob
import os
import re
import sys
import tempfile

_INFO = re.compile(rb"(I\d{4} [\d:.]+ +\d+ \S+:\d+\] |\d{4}-\d\d-\d\d [\d:.]+: I )")  # absl, older TF
_ABSL_NOTE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_NO_GPU = b"failed call to cuInit"


def no_nvidia_device():
    """Linux with no NVIDIA device node (nor WSL's /dev/dxg): CUDA cannot start here."""
    return sys.platform.startswith("linux") and not glob.glob("/dev/nvidia[0-9]*") and not os.path.exists("/dev/dxg")


def unwanted(line, no_gpu):
    """An INFO record or absl's note; with `no_gpu`, also CUDA's failure to start."""
    line = line.strip()
    return bool(_INFO.match(line)) or line == _ABSL_NOTE or (no_gpu and _NO_GPU in line)


@contextlib.contextmanager
def _stderr_without(drop):
    """File descriptor 2 goes to a temporary file in the block; then its lines but those `drop`
    matches go to stderr (also when the block raises)."""
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
        caught = tempfile.TemporaryFile()
    except (OSError, ValueError):
        caught = None
    try:
        saved = os.dup(2) if caught else None
    except OSError:
        saved = None
    if saved is None:  # no usable stderr or temporary file: nothing is filtered
        if caught:
            caught.close()
        yield
        return
    with caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            if sys.stderr is not None:
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = b"".join(line for line in caught.read().splitlines(keepends=True) if not drop(line))
            if kept:
                with open(2, "wb", closefd=False) as stderr:
                    stderr.write(kept)


def import_tensorflow():
    """Imports TensorFlow as the module docstring says (a no-op filter once it is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"].strip() in ("", "0"):
        import tensorflow  # noqa: F401
        return
    no_gpu = no_nvidia_device()
    with _stderr_without(lambda line: unwanted(line, no_gpu)):
        import tensorflow as tf
        if no_gpu:  # CUDA's start, and its error, happen here once instead of at the first op
            tf.config.list_physical_devices("GPU")
