"""``python -m comfyui_grpc serve|dev|simulator``: the server commands without
the client CLI in front."""

from .cli import main

raise SystemExit(main())
