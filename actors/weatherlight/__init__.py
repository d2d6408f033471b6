"""Weatherlight: the root supervisor of a run and the reporter of every actor's state."""
