"""Test doubles of DealFlow's outside parties, run as real services by the
development stack, the tests, the demo and the benchmarks. Not shipped: the
wheel and the production image leave this package out."""
