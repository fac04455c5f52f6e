"""Developer tools that are not part of the pipeline (the SGLang CPU-engine harness)."""
