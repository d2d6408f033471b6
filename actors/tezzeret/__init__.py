"""Tezzeret: ahead-of-time compilation of Karn's blueprints into Urza's artifact store, on the io lane."""
