"""Built-in runtimes: ``echo`` (in-process, for tests and benchmarks) and ``local`` (bash)."""
