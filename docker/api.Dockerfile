# The API image: FastAPI + the job ledger, no PyTorch (the API never loads the ML stack).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY pipeline ./pipeline
COPY inference ./inference
COPY client ./client
COPY migrations ./migrations
RUN pip install .
RUN useradd --create-home --uid 1000 gristmill && mkdir -p /data && chown gristmill /data
USER gristmill
ENV GRISTMILL_DATA_DIR=/data
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v1/health')"
CMD ["gristmill", "api", "--host", "0.0.0.0", "--port", "8000"]
