"""Tamiyo, the strategic controller: policies, risk engine, conservative mode, command signing and field reports."""
