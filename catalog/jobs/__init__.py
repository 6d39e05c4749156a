"""Processing streams' jobs: the catalog's queue, placement near the data, and leases.

Transport-free like :mod:`catalog.service`: :mod:`catalog.jobs.placement` decides where queued
jobs go (a pure function), :mod:`catalog.jobs.store` keeps jobs, attempts and worker reports
in the catalog database (every transition one transaction), :mod:`catalog.jobs.scheduler`
runs placement rounds and wakes long-polling workers, :mod:`catalog.jobs.service` is what the
gRPC servicer (:mod:`catalog.server.jobs_servicer`) calls.
"""
