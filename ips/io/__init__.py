"""Adapters at the edge: the only modules that read or write packets."""
