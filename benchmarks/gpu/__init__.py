"""GPU preparation, device check and block benchmark (see BENCHMARKS.md, "GPU")."""
