"""Urza: the artifact store (content-addressed blobs, SQLite catalogue) and the ready-module cache."""
