"""The service benchmark's workload as a Flower app (see ``benchmarks/bench_service.py``)."""
