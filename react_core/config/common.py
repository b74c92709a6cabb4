"""Schema pieces shared by several config kinds."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional


@dataclass
class ModelConfig:
    """Which CLIP to start from; see `react_core.modeling.load_clip`."""

    name: str = "react-tiny"
    pretrained: Optional[str] = None
    weights: Optional[str] = None
    quick_gelu: Optional[bool] = None
    architecture: Optional[Dict[str, Any]] = None

    def load(self, device: str = "cpu"):
        from react_core.modeling import load_clip

        return load_clip(
            self.architecture or self.name, self.pretrained, self.weights, quick_gelu=self.quick_gelu, device=device
        )
