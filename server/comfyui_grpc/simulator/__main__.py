"""``python -m comfyui_grpc.simulator``: run the ComfyUI simulator until interrupted."""

import sys

from .cli import main

sys.exit(main())
