FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY . /src
RUN pip install /src \
    && rm -rf /src \
    && useradd --system --no-create-home presence

USER presence
EXPOSE 8080
CMD ["python", "-m", "presence", "serve", "--host", "0.0.0.0"]
