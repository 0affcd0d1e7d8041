"""Step 01, clean the data: read and audit, the review, then split and version; the traffic the data misses.

The notebook ``01_clean_the_data`` and ``tunebook clean`` call ``step``.
"""
