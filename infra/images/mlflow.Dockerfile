# MLflow tracking server + registry for infra/compose.yaml: the official image plus what it lacks for a
# Postgres backend store, S3 (MinIO) artifacts and the basic-auth app (`mlflow[auth]`: Flask-WTF).
# MLFLOW_VERSION follows constraints.txt.
ARG MLFLOW_VERSION=3.17.2
FROM ghcr.io/mlflow/mlflow:v${MLFLOW_VERSION}
RUN pip install --no-cache-dir "psycopg2-binary==2.9.10" "boto3==1.43.117" "Flask-WTF==1.2.2"
