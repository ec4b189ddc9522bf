"""The department service: the small HTTP service every provisioned department runs.

One process per department serves that department's workflow webhooks from its own
directory (its SQLite database, OAuth client credentials and deployed workflow files).
It uses only the standard library, so it starts fast and is cheap to run by the hundred;
its data may instead be in PostgreSQL (`postgres`, psycopg), and on a container platform
it is configured by its environment alone (see `cli`).
The control plane imports `department_service.schema` to create the database; everything
else is reached only through `python -m department_service`.
"""
