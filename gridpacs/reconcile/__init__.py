"""``gridpacs reconcile``: per-node instance counts against the catalog, and repair.

Composition only: the comparison is :mod:`catalog.reconcile` (pure), the catalog is asked
through ``HoldingsService``, each node through its ``InventoryService`` (proto/node/v1), so
neither the catalog nor this package reaches into a node's internals.
"""
