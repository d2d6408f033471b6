"""Karn: the blueprint catalogue as the contracts see it, with tiers, approvals, quarantine and deterministic picks."""
