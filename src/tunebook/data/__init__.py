"""The examples: loading a data file with errors that name the row, the cleaning policy, splits and versions.

Near duplicates too. Used by 01 and by every later step that reads a split.
"""
