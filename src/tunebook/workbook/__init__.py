"""The workbook around the package: the papermill runner, review widgets, the workshop kit and its exercises.

The top layer beside the command line: nothing below imports it.
"""
