"""Sensors: the drop sensor that turns new folders into partitions and runs."""
