"""Test doubles (stand-ins for real systems) that tests and benchmarks share; never used in a deployment."""
