# llama.cpp as Gristmill uses it, for llama-cpp-python's source build: CMAKE_ARGS="-C <this file>"
# (the Makefile and worker.Dockerfile pass it). Gristmill calls libllama and ggml's CPU backend
# through llama-cpp-python: GGUF loading, llama_model_quantize, multi-sequence batches, logits
# and perplexity. None of the rest is compiled: 74 objects instead of 178, about 215 CPU seconds
# instead of 420 (llama-cpp-python 0.3.36, gcc 12, benchmarks/bench_install.py).
#
# An initial cache (cmake -C): these entries exist before any CMakeLists.txt runs, and later
# -D options in CMAKE_ARGS (-DGGML_CUDA=on, ...) still override them.

# llama-cpp-python's multimodal library (mtmd, formerly llava): images and audio, unused here.
set(LLAVA_BUILD OFF CACHE BOOL "")
# llama.cpp's tests, tools, examples, server and unified binary (off already when llama.cpp is a
# subproject; stated so that a change of default upstream does not bring them back).
set(LLAMA_BUILD_TESTS OFF CACHE BOOL "")
set(LLAMA_BUILD_TOOLS OFF CACHE BOOL "")
set(LLAMA_BUILD_EXAMPLES OFF CACHE BOOL "")
set(LLAMA_BUILD_SERVER OFF CACHE BOOL "")
set(LLAMA_BUILD_APP OFF CACHE BOOL "")
set(LLAMA_CURL OFF CACHE BOOL "")
# llama.cpp's `common` library: see that file for why it takes a project include.
set(CMAKE_PROJECT_llama.cpp_INCLUDE "${CMAKE_CURRENT_LIST_DIR}/llama-cpp-no-common.cmake"
    CACHE FILEPATH "")
