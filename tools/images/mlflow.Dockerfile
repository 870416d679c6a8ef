# An MLflow tracking server for the kind suite and the README's kind walk-through:
#   mlflow server --backend-store-uri sqlite:////data/mlflow.db --artifacts-destination /data/artifacts
# (clients upload artifacts over HTTP: `mlflow-artifacts:/` URIs, no shared disk). Non-root (65532); /data
# and /tmp are volumes (an emptyDir each in the walk-through), so it runs on a read-only root filesystem.
#
# Built by tools/images/mlflow.sh from a wheelhouse made on the host (the host's pip configuration): nothing
# is fetched inside the build. Installed --no-deps from that wheelhouse minus what only clients use (scipy,
# scikit-learn, matplotlib, pyarrow, ...): the server never imports them. BASE defaults to the bookworm base
# built here (tools/images/python-base.sh); where a registry is reachable:
#   docker build --build-arg BASE=python:3.11-slim-bookworm -f tools/images/mlflow.Dockerfile CONTEXT
ARG BASE=modship.local/python-base:bookworm

FROM ${BASE} AS deps
COPY wheels/ /wheels/
RUN python3 -m venv /opt/mlflow \
 && /opt/mlflow/bin/pip install --no-index --no-deps --no-cache-dir --no-compile /wheels/*.whl \
 && /opt/mlflow/bin/pip uninstall -q -y pip setuptools \
 && /opt/mlflow/bin/python -m compileall -q -j 0 /opt/mlflow/lib

FROM ${BASE}
COPY --from=deps /opt/mlflow /opt/mlflow
ENV PATH=/opt/mlflow/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
WORKDIR /tmp
USER 65532:65532
EXPOSE 5000
CMD ["mlflow", "server", "--backend-store-uri", "sqlite:////data/mlflow.db", "--artifacts-destination", \
     "/data/artifacts", "--host", "0.0.0.0", "--port", "5000", "--workers", "1"]
