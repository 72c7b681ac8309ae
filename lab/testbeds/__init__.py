"""Testbeds: network-namespace rigs and scenario builders used by tests and benchmarks."""
