"""Experiment scripts behind the numbers in docs/results/ (thin wrappers over the package's public entry points)."""
