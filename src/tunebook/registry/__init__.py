"""The MLflow model registry: reading it (``store``) and writing releases, promotions and rollbacks (``register``).

One registered model per job; every write holds the store's lock.
"""
