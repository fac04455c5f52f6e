"""What we ask of each image: extraction tasks (pydantic schemas) and CLIP zero-shot label sets."""
