"""Oona: the message bus actor. The bus itself lives in esper.runtime; this actor owns its housekeeping."""
