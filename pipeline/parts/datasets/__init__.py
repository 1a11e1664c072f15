"""Reading users' files: formats detected and validated, records parsed within limits, texts."""
