"""Lender simulator: a small real HTTP service implementing the LENDER side of
docs/architecture.md §3.4 / §3.5 (applications, disbursement requests, withdrawals in; signed
Standard Webhooks out), used by the demo, the tests and the chaos suite.

A real lender replaces it by configuration only (its entry in the lenders file).

Modules: `config` (SimConfig), `underwriting` (the lender's decision rules, pure),
`app` (the FastAPI service), `ledger` (what was received and sent, SQLite),
`delivery` (the webhook outbox), `faults` (fault injection), `__main__` (the
command line, `python -m sim.lender`). Importing `config` or `underwriting`
does not pull in FastAPI.
"""
