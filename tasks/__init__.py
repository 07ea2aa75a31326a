"""Prefect tasks: the DAG's nodes, one per step kind, each with its Prefect concerns.

A task takes the typed objects the flows pass down (a `smollm.lineage.StageNode`, built data as
`StepResult`s, a `smollm.results.MemberJob`), runs one `smollm.runs` function inside its
tracked MLflow run, publishes its Prefect artifacts, and is retried on transient errors only
(`tasks/common.py`). Caching is the step outputs' own completion markers (`smollm.steps`),
which hold across processes and flow runs with or without a Prefect server; Prefect's
input-hash cache is off (`NO_CACHE`) so an unhashable input can never produce a false hit
(Prefect issue #15861).
"""
