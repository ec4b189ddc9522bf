"""`python -m department_service --department-id ID --dir DIR`."""

from department_service.cli import main

raise SystemExit(main())
