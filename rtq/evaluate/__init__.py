"""rtq.evaluate: COCO AP (`coco_ap`), the evaluation loop (`loop`) and FPS timing (`fps`), all via runners."""
