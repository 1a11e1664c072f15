# The GPU worker image: CUDA PyTorch and the whole pipeline. Run one per GPU machine with
# `--queues gpu --concurrency 1 --max-tasks-per-child 1` (a fresh process, and CUDA memory, per job).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
    build-essential && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The CUDA build of torch, pinned here (tests and CI pin the CPU build in constraints-cpu.txt).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
WORKDIR /app
COPY pyproject.toml README.md alembic.ini constraints-cpu.txt ./
COPY docker/llama-cpp.cmake docker/llama-cpp-no-common.cmake ./docker/
COPY app ./app
COPY workers ./workers
COPY pipeline ./pipeline
COPY inference ./inference
COPY client ./client
COPY migrations ./migrations
# llama.cpp's binding compiles here with only what Gristmill calls (docker/llama-cpp.cmake: libllama
# and ggml's CPU backend; more options with --build-arg CMAKE_ARGS="... -DGGML_CUDA=on"). The
# constraints pin llama-cpp-python for that file; their torch==2.13.0 is met by the CUDA build
# above. gptqmodel goes in without its numpy pin (see the Makefile).
ARG CMAKE_ARGS="-C /app/docker/llama-cpp.cmake"
RUN pip install -c constraints-cpu.txt '.[worker,gguf,gptq]' \
    && pip install --no-deps 'gptqmodel==7.6.0'
RUN useradd --create-home --uid 1000 gristmill && mkdir -p /data && chown gristmill /data
USER gristmill
ENV GRISTMILL_DATA_DIR=/data
CMD ["gristmill", "worker", "--queues", "gpu", "--concurrency", "1", "--max-tasks-per-child", "1"]
