"""The run folder and what it holds: artifacts and their schemas, lineage, tables, the cache, step settings, figures.

Every step reads and writes through ``core.runfolder.RunFolder``; this layer imports only the card and errors.
"""
