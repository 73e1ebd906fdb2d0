"""rtq.evaluate: COCO AP (`coco_ap`), the evaluation loop (`loop`), timing (`timing`, `fps`) and the
CPU benchmark (`bench_settings`, `bench_artifacts`, `bench_run`), all via runners."""
