"""A released version in use: the MLflow pyfunc model, fetching and answering with the champion, the inference log.

Imports no training or release code.
"""
