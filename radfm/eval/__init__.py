"""RadBench evaluation: tasks, generation, metrics and the benchmark report."""
