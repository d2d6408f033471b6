"""Kasmina: seed slots, their lifecycle state machine, gates G0-G5 and the evidence windows the gates judge."""
