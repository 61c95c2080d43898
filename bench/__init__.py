"""softlight.bench: checking every kernel against the reference, benchmarks and reports."""
