"""The PostgreSQL adapter of the `database` step (`PROVISIONER_TENANT_DATABASE_URL`).

- `adapter`: `PostgresTenantDatabase`, the step itself (apply, compensate, check).
- `naming`: the department's role and schema names, SQL quoting, the SCRAM verifier.
- `templates`: the versioned data model (`steps/templates/postgres/v<N>.sql`) and the
  row-level security every department table gets.
- `health`: the live check behind `check`.
- `errors`: driver errors into step errors, retryable or not.
"""

from provisioner.steps.tenant_postgres.adapter import PostgresTenantDatabase
from provisioner.steps.tenant_postgres.naming import DepartmentNames, department_names

__all__ = ["DepartmentNames", "PostgresTenantDatabase", "department_names"]
