"""YOLOv5 model definitions (yaml configs + building blocks)."""
