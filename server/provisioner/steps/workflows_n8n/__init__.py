"""The n8n adapter of the `workflows` step (`PROVISIONER_N8N_URL`, `PROVISIONER_N8N_API_KEY`).

- `adapter`: `N8nWorkflows`, the step itself (apply, compensate, check).
- `convert`: our rendered workflow templates as n8n workflows (a webhook trigger and
  the node that does the work: Send Email, Google Drive, or Edit Fields), and the
  names, tag, webhook path and credential ids that identify a department's in n8n.
- `client`: n8n's public REST API, with its failures translated into step errors.

`scripts/start-n8n` installs and starts a private n8n for development and tests.
"""

from provisioner.steps.workflows_n8n.adapter import N8nWorkflows
from provisioner.steps.workflows_n8n.convert import department_tag, to_n8n, webhook_path, workflow_name

__all__ = ["N8nWorkflows", "department_tag", "to_n8n", "webhook_path", "workflow_name"]
