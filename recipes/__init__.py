"""Shipped YAML recipes (data only; this file makes them findable with importlib.resources)."""
