"""Shipped assets: the default configuration and the dashboard's style sheet."""
