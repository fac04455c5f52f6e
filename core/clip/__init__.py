"""CLIP on open_clip: loading (real or stand-in weights), decoding, embeddings, zero-shot, S2."""
