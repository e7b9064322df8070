# radfm and its flows on the Prefect image: the image of the Prefect worker (process work pool), whose flow
# runs train, evaluate and register. Build from the repository root:
#   docker build -f infra/images/radfm.Dockerfile -t radfm/radfm:0.1.0 .
# Versions follow constraints.txt (prefect 3.9.1, Python 3.11); ray[client] lets a flow reach a Ray cluster
# at RAY_ADDRESS=ray://<head>:10001.
ARG PREFECT_IMAGE=prefecthq/prefect:3.9.1-python3.11
FROM ${PREFECT_IMAGE}
WORKDIR /opt/radfm
COPY . /opt/radfm
RUN pip install --no-cache-dir -c constraints.txt -e . "ray[client]==2.60.0"
# prefect.yaml's pull step changes into {{ $RADFM_REPO }} before a flow run starts.
ENV RADFM_REPO=/opt/radfm RADFM_HOME=/var/lib/radfm HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1 RAY_USAGE_STATS_ENABLED=0
