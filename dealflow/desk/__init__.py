"""The deal desk: server-rendered pages where back-office staff do their day's
work, served by the API process on the same rules, permissions and operations
as the JSON API (`dealflow/api/operations.py`).

- `session`: the signed-in user (a server-side session behind an opaque
  HttpOnly cookie), CSRF tokens on every form post.
- `signin`: the sign-in page (development pick-a-role, bearer token) and sign-out;
  `oidc`, `oidc_signin`: sign-in through the organisation's OpenID Connect
  provider (authorization code with PKCE).
- `work`: My work, the pending actions of the signed-in role across all deals.
- `deals`: the deals table (filters, sorting, paging by cursor).
- `deal_page`: one deal's page, its live poll, its actions and its timeline;
  `deal_view` computes what it shows, `forms` makes each action's form from
  the action's model and reads it back; `deal_documents`: upload and download.
- `new_deal`: the new-deal form, its live preview of the rules and the money.
- `reports`, `charts`: the reports page and its server-drawn SVG charts.
- `pages`: rendering a page with the layout, the user and the language
  (`dealflow/i18n.py`: the catalogue and locale formatting).
- `router`: the desk's routes and static files, mounted by the API app.
"""
