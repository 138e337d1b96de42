"""Lender simulator: a small real HTTP service implementing the LENDER side of
docs/architecture.md §3.4 / §3.5 (applications, disbursement requests, withdrawals in; signed
Standard Webhooks out), used by the demo, the tests and the chaos suite.

A real lender replaces it by configuration only (its entry in the lenders file).

Modules, one job each:

* `config`         -- `SimConfig`: lenders, ledger file, webhook target, timings
* `underwriting`   -- the lender's decision rules, pure functions
* `scripts`        -- per-deal scripted answers instead of the rules
* `simulator`      -- `LenderSim`: applications, disbursements, withdrawals, scripts
* `webhook_events` -- the event types the lender sends, and a decision's data
* `ledger`         -- what was received and sent (SQLite), the webhook outbox
* `delivery`       -- signing and sending the outbox's webhooks, with retries
* `faults`         -- fault injection on the lender API
* `inbound`        -- reading a request: JSON body with its hash, Idempotency-Key
* `problems`       -- errors as problem JSON
* `app`            -- the FastAPI service: routes and error handlers
* `__main__`       -- the command line, `python -m sim.lender`

Importing `config` or `underwriting` does not pull in FastAPI.
"""
