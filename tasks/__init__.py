"""Prefect tasks: thin wrappers, one per step kind, each calling one `smollm` function.

Caching is the step outputs' own completion markers (`smollm.steps`), which hold across
processes and flow runs with or without a Prefect server; Prefect's input-hash cache is off
(`NO_CACHE`) so an unhashable input can never produce a false hit (Prefect issue #15861).
"""
