"""Several gateway replicas sharing one PostgreSQL job store: backend
ownership by lease, a shared waiting line, jobs followed across replicas."""
