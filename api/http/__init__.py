"""HTTP plumbing: application state, dependencies, error handlers, body limits, idempotency,
`Prefer: wait`, event streams, the job-status cache, metrics and the 202 every job POST ends
with. Nothing here knows what a valid request is (api/checks) or what a route does."""
