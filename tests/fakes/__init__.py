"""Test doubles of external systems (named as such); production clients talk to them unchanged."""
