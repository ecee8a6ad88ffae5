"""The model core's benchmarks, run as `codegemma bench decode` and `codegemma bench speculative`: each
prints its measurements and ends with one JSON line."""
