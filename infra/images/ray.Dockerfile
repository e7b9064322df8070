# Ray head and workers with radfm installed (Ray Train workers import radfm to run the training loop).
# CPU:  docker build -f infra/images/ray.Dockerfile -t radfm/ray:2.60.0-py311 .
# GPU:  docker build -f infra/images/ray.Dockerfile --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu \
#         -t radfm/ray:2.60.0-py311-gpu .
# The Ray version and Python must match the driver's (constraints.txt: ray 2.60.0, Python 3.11).
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311
FROM ${RAY_IMAGE}
WORKDIR /opt/radfm
COPY --chown=ray:users . /opt/radfm
RUN pip install --no-cache-dir -c constraints.txt -e .
ENV RADFM_HOME=/tmp/radfm HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0
