# syntax=docker/dockerfile:1
# CPU image by default:   docker build -t cameo-consent .
# GPU workers:            docker build --target gpu -t cameo-consent:gpu .

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY consent_service ./consent_service
COPY policy ./policy
COPY audit ./audit
COPY generator_adapter ./generator_adapter
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && /opt/venv/bin/pip install --no-cache-dir '.[generator,verification]' \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps invisible-watermark==0.2.0 resemblyzer==0.1.4 \
      insightface==2.1 speechbrain==1.1.2

FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 AS gpu
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /srv consent && mkdir -p /srv/var && chown consent /srv/var
COPY --from=build /src /src
# PyPI's Linux torch wheel is the CUDA build; onnxruntime-gpu replaces the CPU onnxruntime
# (both install the same module) so insightface packs run on CUDA.
RUN python3.11 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir '/src[generator,verification]' \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps invisible-watermark==0.2.0 resemblyzer==0.1.4 \
      insightface==2.1 speechbrain==1.1.2 \
 && /opt/venv/bin/pip uninstall -y onnxruntime \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps onnxruntime-gpu==1.31.1
ENV PATH=/opt/venv/bin:$PATH CONSENT_DATA_DIR=/srv/var PYTHONUNBUFFERED=1
WORKDIR /srv
USER consent
CMD ["sh", "-c", "consent-admin migrate && consent-serve --host 0.0.0.0 --port 8000 --no-access-log"]

# Last stage, so a plain `docker build` gives the CPU image.
FROM python:3.11-slim AS cpu
RUN useradd --system --uid 10001 --home /srv consent && mkdir -p /srv/var && chown consent /srv/var
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH CONSENT_DATA_DIR=/srv/var PYTHONUNBUFFERED=1
WORKDIR /srv
USER consent
EXPOSE 8000
CMD ["sh", "-c", "consent-admin migrate && consent-serve --host 0.0.0.0 --port 8000 --no-access-log"]
