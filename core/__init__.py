"""Service state shared by the HTTP API and the workers: settings, tables, storage, job states."""
