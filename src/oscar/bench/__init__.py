"""Benchmarking: timing and memory per pipeline stage (``oscar bench``) and its reports."""
