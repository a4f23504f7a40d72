"""Backends: the framework-specific side of the seam (:class:`trainwatch.core.backend.Backend`)."""
