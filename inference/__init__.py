"""The inference service: a separate process (``gristmill inference``) that serves registry models.

It is the only part of Gristmill that generates text. The API process authenticates, resolves the
tenant's model id to folders on the shared store and forwards the request here; this process
loads those folders (LRU within a memory budget) and generates. Nothing here imports ``app``.
"""
