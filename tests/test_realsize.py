"""A model over protobuf's 2 GiB, end to end (slow suite: about 3 minutes, 1.3 GB of disk).

Qwen2-VL-2B's published widths with 8 text layers and 1 vision layer, bf16 on disk
(benchmarks/make_checkpoint.py): the float32 language model is 2.3 GB, over protobuf's
2 GiB limit, so export, compile and run all have to keep weights out of protos. The
memory figures live in benchmarks/realsize_benchmark.py, not here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_over_2gib_model_exports_compiles_and_runs(tmp_path, run_cli):
    from spikec.frontend.export import sample_image
    from spikec.isa.container import SectionKind
    from spikec.runtime.model import load

    ckpt = tmp_path / "ckpt"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_checkpoint.py"), "--model", "qwen2-vl-2b",
                    "--text-layers", "8", "--vision-layers", "1", "-o", str(ckpt)], check=True,
                   capture_output=True)
    r = run_cli("export", str(ckpt), "-o", str(tmp_path / "export"))
    assert r.code == 0, r.err
    assert (tmp_path / "export" / "lm.onnx.data").stat().st_size > 2**31
    r = run_cli("compile", str(tmp_path / "export"), "-o", str(tmp_path / "m.sbin"))
    assert r.code == 0, r.err
    with load(tmp_path / "m.sbin") as spiking, load(tmp_path / "m.sbin", mode="exact") as exact:
        tensors = spiking.sbin.file.names(SectionKind.TENSOR)
        assert sum(spiking.sbin.file.sections[n].size for n in tensors) > 1.5 * 2**30
        gen = spiking.generator()
        ids = gen.generate_ids(gen.prepare([sample_image(224, 224)], ["Describe the image."]), 4)
        fgen = exact.generator()
        fids = fgen.generate_ids(fgen.prepare([sample_image(224, 224)], ["Describe the image."]), 4)
    np.testing.assert_array_equal(ids, fids)  # integer products == explicit spike planes, at real size
