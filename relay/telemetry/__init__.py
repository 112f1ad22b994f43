"""What an operator watches: each request's record and access line (`access`), the Prometheus
metrics (`metrics`, and the store calls they time, `storecalls`), and OpenTelemetry traces
(`traces`, imported only when an OTLP endpoint is configured).

Imports nothing else of `relay`: the record is filled in by the code that knows each field, and
the figures of long-lived objects are handed in when sampled.
"""
