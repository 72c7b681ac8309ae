"""Benchmarks: each writes its figures as JSON and prints a table (`egressgw bench NAME`)."""
