"""``python -m comfyui_grpc_client``: the ``comfyui-grpc`` command without the script."""

from .cli import main

raise SystemExit(main())
