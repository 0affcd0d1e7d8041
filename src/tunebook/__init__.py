"""tunebook: a guided workbook for fine-tuning a language model on one concrete business task."""

from tunebook.errors import TunebookError

__version__ = "0.1.0"
__all__ = ["TunebookError", "__version__"]
