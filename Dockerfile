# syntax=docker/dockerfile:1
# One image for every part of mieruka: the command picks the part
#   docker run IMAGE collect --plant /etc/mieruka/plant.yaml ...   (or api, dashboard, token, ...)
# deploy/compose/ and deploy/k8s/ run it; the README's "Deployment" section walks through them.

# --- build: the project and its dependencies into a venv, installed as pyproject.toml declares ---
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core ./core
COPY collector ./collector
COPY api ./api
COPY dashboard ./dashboard
COPY simulators ./simulators
COPY mieruka ./mieruka
# a plain (not editable) install: the venv is complete without the sources, which stay in this stage
RUN python -m venv /opt/mieruka && /opt/mieruka/bin/pip install --no-compile . \
    && /opt/mieruka/bin/python -m compileall -q /opt/mieruka/lib

# --- run: the venv alone, as an unprivileged user ---
FROM python:3.11.13-slim-bookworm
LABEL org.opencontainers.image.title="mieruka" \
      org.opencontainers.image.description="Production visibility: collector, API and wall-board dashboard" \
      org.opencontainers.image.licenses="Apache-2.0"
# a fixed uid/gid: volumes (the collector's spool) and mounted secrets are given to 10001
RUN groupadd --system --gid 10001 mieruka \
    && useradd --system --uid 10001 --gid mieruka --home-dir /var/lib/mieruka --create-home --shell /usr/sbin/nologin mieruka
COPY --from=build /opt/mieruka /opt/mieruka
# the bundled demo plant, so `mieruka demo` and `check-config` have an example inside the image
COPY deploy/plants/demo.yaml /etc/mieruka/demo.yaml
ENV PATH=/opt/mieruka/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/mieruka
# 8000 api, 8050 dashboard, 9464 the collector's Prometheus metrics
EXPOSE 8000 8050 9464
# No HEALTHCHECK here: the one image runs three servers on three ports, so the image cannot know
# which to probe. Each deployment says it: deploy/compose/compose.yaml runs `python -m mieruka.probe URL`
# (the API's and the dashboard's /healthz, the collector's metrics), deploy/k8s/ uses httpGet probes.
HEALTHCHECK NONE
ENTRYPOINT ["mieruka"]
CMD ["--help"]
