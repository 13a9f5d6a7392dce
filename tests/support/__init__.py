"""Helpers shared by the test folders: free ports, polling, child processes, synthetic pairs."""
