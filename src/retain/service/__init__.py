"""Service layer: ``retain serve``, a model store behind an HTTP API that keeps learning by itself."""

from retain.extras import require_extra

require_extra("serve", "fastapi", "uvicorn", "prometheus_client")
