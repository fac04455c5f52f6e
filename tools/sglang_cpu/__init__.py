"""Running the released SGLang server on a CPU-only host (make sglang-env)."""
