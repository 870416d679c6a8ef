# The modship operator image: `python -m controller.entrypoints.operator` (the chart's command), and the
# in-cluster router from the same image (`python -m controller.entrypoints.router`).
# Non-root (65532), runs on a read-only root filesystem (everything writable is under /tmp), and holds only
# what the operator and the router import: no bentoml, onnxruntime, numpy, pandas, pyarrow or full mlflow.
#
# Built by tools/images/build.sh from a wheelhouse made on the host (the host's pip configuration), so nothing
# is fetched inside the build. BASE defaults to the debootstrapped bookworm base built here
# (tools/images/python-base.sh); where a registry is reachable the same file builds on the stock base:
#   docker build --build-arg BASE=python:3.11-slim-bookworm -f tools/images/operator.Dockerfile CONTEXT
ARG BASE=modship.local/python-base:bookworm

FROM ${BASE} AS deps
# the third-party venv: this stage (and the layer copied from it) is reused until the dependencies change
COPY wheels/ /wheels/
RUN python3 -m venv /opt/modship \
 && /opt/modship/bin/pip install --no-index --find-links /wheels --no-cache-dir --no-compile -r /wheels/requirements.txt \
 && /opt/modship/bin/pip uninstall -q -y pip setuptools \
 && /opt/modship/bin/python -m compileall -q -j 0 /opt/modship/lib

FROM ${BASE}
COPY --from=deps /opt/modship /opt/modship
# modship itself: the controller package (a clean copy of the sources, no build step)
COPY controller/ /opt/modship/lib/python3.11/site-packages/controller/
# the router's hot modules compiled by mypyc on the host from these same sources (`make native`), loaded
# only when they match them (controller/adapters/router/native.py); empty where the host has no compiler,
# and the router runs its Python
COPY native/ /opt/modship/native/
RUN /opt/modship/bin/python -m compileall -q /opt/modship/lib/python3.11/site-packages/controller \
 && chmod -R a+rX,go-w /opt/modship/lib/python3.11/site-packages/controller /opt/modship/native
ENV PATH=/opt/modship/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp MODSHIP_HOME=/tmp/modship MODSHIP_NATIVE=/opt/modship/native
WORKDIR /tmp
USER 65532:65532
CMD ["python", "-m", "controller.entrypoints.operator"]
