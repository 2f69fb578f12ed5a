"""Dagster wiring: assets, checks, partitions, resources, sensors and schedules over `market/` and `store/`."""
