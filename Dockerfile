# The smollm image: the project with its pinned dependencies (CPU torch; for CUDA, install torch
# from the CUDA index instead). docker-compose.yml runs the Prefect server, the MLflow server and
# the worker from it, with the same commands as `make serve` (smollm/services.py).
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_ENABLE_TELEMETRY=false \
    DO_NOT_TRACK=1 \
    SMOLLM_WORKDIR=/work

WORKDIR /app
COPY . .
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install -c constraints.txt -e ".[postgres]" \
 && pip check

RUN useradd --create-home smollm && mkdir -p /work /mlartifacts && chown smollm /work /mlartifacts
USER smollm

# The worker: registers the stage, pipeline and sweep deployments and runs what the UI triggers.
CMD ["python", "-m", "flows.served"]
