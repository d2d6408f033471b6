"""Leyline: the contracts. msgspec Structs and enums for every message and for the config; no torch, no asyncio."""
