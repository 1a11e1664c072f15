# Runs inside llama.cpp's own project() call (docker/llama-cpp.cmake names it in
# CMAKE_PROJECT_llama.cpp_INCLUDE). llama-cpp-python forces llama.cpp's `common` library on with
# a FORCEd cache entry, so -DLLAMA_BUILD_COMMON=OFF cannot turn it off, although its Python
# package neither ships nor loads that library: `common` (argument parsing, chat templates, model
# downloads over cpp-httplib) serves llama.cpp's command-line tools, server and examples only.
# A normal variable shadows the cache entry in llama.cpp's directory, and option() leaves it
# alone (policy CMP0077, NEW under llama.cpp's cmake_minimum_required), which is how llama.cpp's
# own WebAssembly build leaves `common` out.
set(LLAMA_BUILD_COMMON OFF)
