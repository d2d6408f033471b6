"""One package per subsystem; actors talk only through messages and never import each other."""
