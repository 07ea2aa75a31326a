#!/bin/sh
# One PostgreSQL server, two databases: `prefect` (POSTGRES_DB) and `mlflow` (made here, on the
# first start of an empty volume). Both hold their own migration tables, so they cannot share one.
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -c "CREATE DATABASE mlflow;"
