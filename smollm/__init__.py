"""smollm: a declarative orchestrator for data-centric LM training (the SmolLM2 loop).

The library is plain Python: no Prefect, no Hydra global state. `flows/` composes configs and
calls `tasks/`, which call one function of this package each.
"""

__version__ = "0.1.0"
