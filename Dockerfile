# OFA specialization service: one image for the API, the worker and the migrate step (config from env only).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 PIP_NO_CACHE_DIR=1 OFA_VAR_DIR=/app/var
WORKDIR /app
COPY pyproject.toml ./
COPY ofa_core ./ofa_core
COPY service ./service
COPY workers ./workers
COPY migrations ./migrations
COPY alembic.ini ./
# Pass --build-arg PIP_EXTRA_INDEX_URL=<a CPU-only torch wheel index> to keep the image free of CUDA libraries.
ARG PIP_EXTRA_INDEX_URL=""
RUN pip install . && useradd -r -u 10001 ofa \
    && mkdir -p /app/var && chown ofa /app/var
USER ofa
EXPOSE 8000
CMD ["uvicorn", "--factory", "service.app:app_factory", "--host", "0.0.0.0", "--port", "8000"]
