"""tunebook: a guided workbook for fine-tuning a language model on one concrete business task."""

import logging
import warnings

from tunebook.errors import TunebookError

__version__ = "0.1.0"
__all__ = ["TunebookError", "__version__"]


class _HubKernelNotice(logging.Filter):
    """Drop bitsandbytes' notice that it could not download an optional CPU kernel from the hub.

    The workbook runs offline; bitsandbytes falls back to its built-in kernel, and the notice
    would otherwise open every notebook with a warning the learner can do nothing about.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_HubKernelNotice())
# LLM.int8() on a CPU casts float32 inputs to float16 and says so on every layer call; QUANTIZATION='int8' is a
# deliberate choice, and the notice would flood the notebook.
warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
