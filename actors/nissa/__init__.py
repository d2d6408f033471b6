"""Nissa: metrics, alert rules, SLO burn, Prometheus exposition and metrics.csv (REFERENCE.md section 9)."""
