# One image for the darb services (api, executor, web); docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY requirements.lock pyproject.toml README.md ./
RUN pip install -r requirements.lock

COPY protos ./protos
COPY shared ./shared
COPY services ./services
COPY darb ./darb
RUN python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. \
        $(find protos -name '*.proto') \
    && find darb/v1 darb/executor -type d -exec touch {}/__init__.py \; \
    && pip install --no-deps -e .

RUN useradd --create-home --uid 10001 darb && mkdir -p /var/lib/darb && chown darb /var/lib/darb
USER darb
ENV DARB_DATA_DIR=/var/lib/darb
