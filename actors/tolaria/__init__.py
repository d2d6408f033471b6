"""Tolaria: the trainer. The step loop on the train lane, step-boundary plans, telemetry, snapshots, checkpoints."""

from __future__ import annotations
