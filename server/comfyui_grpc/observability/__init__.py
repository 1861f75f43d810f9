"""Metrics, health and the small servers that expose them."""
