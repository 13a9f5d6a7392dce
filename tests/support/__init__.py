"""Helpers shared by the test folders (and the benchmarks' synthetic slides): free ports,
polling, child processes, synthetic pairs and slides, settings, databases."""
