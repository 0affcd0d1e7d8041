"""The job card: its schema, the checks on answers, and one module per task kind (``tasks/``).

The bottom of the package: everything else reads a card; a card reads nothing above it.
"""

# The kinds register their card checks with ``schema`` as they load; loading them with the package means no card
# is validated before its kind's checks are known.
from tunebook.card import tasks  # noqa: F401
