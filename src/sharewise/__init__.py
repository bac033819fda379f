"""sharewise: deep multi-task learning that learns what to share.

The library is usable without the CLI; every model is a plain ``torch.nn.Module``.
"""

__version__ = "0.1.0"

from .api import Run, fit, load_run
from .errors import ConfigError, DataError, RunDirError, SharewiseError, TrainingError

__all__ = ["ConfigError", "DataError", "Run", "RunDirError", "SharewiseError", "TrainingError", "__version__", "fit",
           "load_run"]
