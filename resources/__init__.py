"""One resource per external system the pipeline talks to."""
