"""The loader module MLflow records in every released version (``loader_module: tunebook.pyfunc`` in its MLmodel).

The name is part of each registered version, so it stays fixed while the package's layout changes; the released model
itself is built in ``tunebook.serving.pyfunc``.
"""

from tunebook.serving.pyfunc import _load_pyfunc

__all__ = ["_load_pyfunc"]
