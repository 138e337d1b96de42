"""The API's routes, one module per resource: deals and their actions,
documents, the local store's signed files, lender webhooks, the codec server."""
