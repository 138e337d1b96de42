"""What the tests share, one module per kind of help: the Temporal stack and a
worker (`stack`), the back-office desk over Temporal (`back_office`) and over
HTTP (`api_stack`), the committed histories and their replayer (`replay`), HTTP
services in the test process (`servers`), peak memory (`memory`), and the
worker a server-kill test runs in a subprocess (`update_race`). Fixtures built
on them live in tests/conftest.py."""
