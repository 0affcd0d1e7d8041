"""Step 06, monitor: the alert signals on a window of traffic, shadow staging, and labelled traffic back to data.

The notebook ``06_monitor`` and ``tunebook monitor`` call ``monitor_run_folder`` and ``watch``.
"""
