"""`has_native_bf16` on a CPU: AMX tiles or AVX512-BF16 each count; neither, or a torch without the
private probes, means float32 for `--llm-dtype auto`."""

from __future__ import annotations

import pytest
import torch

from gecko_cli.contract.env import choose_dtype, has_native_bf16


def _cpu(monkeypatch: pytest.MonkeyPatch, **probes: bool | None) -> None:
    for name, answer in probes.items():
        if answer is None:
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda answer=answer: answer)


@pytest.mark.parametrize(("amx", "avx512_bf16", "native"), [
    (True, False, True),  # Intel Sapphire Rapids and later
    (False, True, True),  # AMD Zen 4, Intel Cooper Lake: bf16 dot products without tiles
    (True, True, True),
    (False, False, False),  # AVX2 only: bf16 is emulated
    (None, None, False),  # a torch without the probes
    (None, True, True),
])
def test_either_bf16_instruction_set_counts_as_native(monkeypatch: pytest.MonkeyPatch, amx: bool | None,
                                                      avx512_bf16: bool | None, native: bool) -> None:
    _cpu(monkeypatch, _is_amx_tile_supported=amx, _is_avx512_bf16_supported=avx512_bf16)
    assert has_native_bf16("cpu") is native
    assert choose_dtype("auto", has_native_bf16("cpu")) == ("bfloat16" if native else "float32")
