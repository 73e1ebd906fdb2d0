"""Environment fingerprint: CPU model and INT8 flags parsed from cpuinfo text."""

from __future__ import annotations

from rtq.evaluate.environment import cpu_description, fingerprint


def test_cpu_description_reads_model_and_int8_flags() -> None:
    cpu = cpu_description("model name : Test CPU\nflags : avx2 avx512_vnni\n")
    assert cpu["model"] == "Test CPU"
    assert cpu["avx2"] and cpu["avx512_vnni"] and not cpu["amx_int8"] and not cpu["avx_vnni"]
    assert cpu_description("")["model"]  # falls back to something printable


def test_fingerprint_keeps_the_load_read_before_the_work() -> None:
    found = fingerprint("1.00 2.00 3.00")
    assert found["load_before"] == "1.00 2.00 3.00"
    assert {"cpu", "versions", "load_after"} <= set(found) and "onnxruntime" in found["versions"]


def test_cpu_description_reads_the_bf16_flags_that_decide_openvino_bf16() -> None:
    cpu = cpu_description("model name : Test CPU\nflags : avx512_vnni avx512_bf16\n")
    assert cpu["avx512_bf16"] and not cpu["amx_bf16"] and not cpu["amx_tile"]
    assert "openvino" in fingerprint("0")["versions"]
