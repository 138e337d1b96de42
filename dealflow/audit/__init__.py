"""The audit tools (`dealflow-audit`, docs/architecture.md §3.6), one module per job.

- `histories`: history files, fetching a deal's runs, exports
- `payloads`: finding and decrypting the payloads in a history
- `replay`: replay against the current workflow code, and where it diverges
- `timeline`: a deal's decoded timeline; `formatting`: how its values read
- `as_of`: a deal's state as of a past time
- `render`: a timeline as text, Markdown, JSON or HTML (the HTML from the
  templates in `dealflow/templates/audit/`)
- `archive`: the hash-chained archive of closed deals, and its verification
- `cli`: the `dealflow-audit` command (`python -m dealflow.audit`); `errors`:
  `AuditError`, what a command reports to the operator instead of a traceback
"""
