"""DealFlow's fault suite (`python -m bench.chaos`) and benchmarks (`python -m bench.run`)."""
