"""Launchers and local tools; run as modules: ``python -m scripts.NAME`` (the Makefile does)."""
