"""The actor kernel: mailbox, ref, actor, supervisor, breaker, emergency ladder, lanes, bus, clock, errors."""
