"""The job card: its schema, the checks on answers, and one module per task kind (``tasks/``).

The bottom of the package: everything else reads a card; a card reads nothing above it.
"""
