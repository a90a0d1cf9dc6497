"""Operating Darkroom: the `darkroom` command, the private broker, the projection and benchmarks."""
