"""Operator views over the running daemon: flows (ipsctl flows) and the live terminal (top)."""
