# The presence server. Build stage: the wheel, from the sources alone. Runtime
# stage: that wheel and its dependencies, no sources and no build tools.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
RUN pip install "build>=1.2"
COPY pyproject.toml setup.cfg README.md LICENSE ./
COPY presence ./presence
RUN python -m build --wheel --outdir /dist .


FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=build /dist/ /tmp/dist/
RUN pip install /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && groupadd --system --gid 10001 presence \
    && useradd --system --uid 10001 --gid presence --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin presence

# Numeric, so that a runtime can tell the user is not root (Kubernetes'
# runAsNonRoot) without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
# Slim images have no curl: ask /healthz with Python. Any answer but a 200
# (a 503 when Redis does not answer) or no answer is unhealthy.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PRESENCE_PORT', '8080') + '/healthz', timeout=3)"]
CMD ["presence", "serve", "--host", "0.0.0.0"]
