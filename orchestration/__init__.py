"""Dagster wiring: settings, partitions, jobs, resource sets and the one `Definitions` object."""
