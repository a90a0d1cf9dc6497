# One image for every Darkroom service; compose.yaml picks the process with `command`.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# torch first, pinned, from the CPU index (GPU hosts: build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128)
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url ${TORCH_INDEX} "torch==2.13.0"

COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY services ./services
COPY pipelines ./pipelines
COPY ops ./ops
COPY clients/python ./clients/python
RUN pip install ./clients/python .

ENV DARKROOM_DATA_DIR=/data DARKROOM_LOG_FORMAT=json
VOLUME /data
CMD ["darkroom", "--help"]
