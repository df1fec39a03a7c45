"""Cohorts: many slides at once on dask.distributed, from a laptop's LocalCluster to a
cluster's scheduler. `batch` refines every slide's prompts; `precompute` stores the encoder
outputs of every slide's tissue. Workers compute, the client stores (one writer per store).
"""
