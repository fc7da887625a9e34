"""Benchmarks of the project, apart from the tests: ``make bench`` runs ``benchmarks.compare``."""

__all__ = []
