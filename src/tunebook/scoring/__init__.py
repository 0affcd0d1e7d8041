"""Metrics per task kind, bootstrap intervals and paired tests, and the drift statistics of monitoring.

Pure functions over answers and examples: no model is loaded here.
"""
