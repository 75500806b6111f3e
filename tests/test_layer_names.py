"""Layers carry the checkpoint's module paths from export to every place a user reads them:
the compile report, `spikec inspect`, `spikec disasm` comments and `spikec run --stats`."""

from __future__ import annotations

import json

from isa_graphs import compiled_isa

from spikec.package import SbinModel

LAYER = "model.language_model.layers.0.mlp.down_proj"


def test_names_reach_every_view(run_cli, tmp_path):
    from spikec.frontend.export import sample_image

    path = compiled_isa(3, 4)
    with SbinModel(path) as m:
        report = m.section_json("report")
    rows = report["extra"]["graphs"]["lm"]["layers"]
    assert LAYER in {r["name"] for r in rows}  # the compile report
    r = run_cli("inspect", path)
    assert r.code == 0 and f"    {LAYER}  text=4 vision=3" in r.out
    r = run_cli("inspect", path, "--json")
    layers = json.loads(r.out)["graphs"]["lm"]["spiking_layers"]
    assert {"name": LAYER, "timesteps": {"text": 4, "vision": 3}, "wbits": 8} in layers
    r = run_cli("disasm", path)
    assert r.code == 0 and any(line.startswith("# kernel ") and line.split(": ", 1)[1].startswith(f"lm:{LAYER} ")
                               for line in r.out.splitlines())
    image = tmp_path / "img.png"
    sample_image().save(image)
    r = run_cli("run", path, "--image", str(image), "--prompt", "What is in the image?", "--max-new-tokens", "2",
                "--stats")
    assert r.code == 0 and f"lm:{LAYER} " in r.out


def test_fused_linear_nodes_keep_module_paths(tmp_path):
    """The optimizer fuses a MatMul and its bias Add into a Gemm it names `node_Gemm_N`
    (Qwen2-VL's vision blocks); the export names it after the module again."""
    import onnx

    from spikec.frontend.export import export_quietly

    out = export_quietly("tiny-qwen2-vl", tmp_path / "ex")
    for role in ("vision", "lm"):
        m = onnx.load(str(out / f"{role}.onnx"), load_external_data=False)
        linear = [n for n in m.graph.node if n.op_type in ("Gemm", "MatMul") and len(n.input) > 1
                  and n.input[1].endswith(".weight")]
        assert linear and all(n.name == n.input[1][: -len(".weight")] for n in linear), \
            [(n.name, n.input[1]) for n in linear if n.name != n.input[1][: -len(".weight")]]
    assert any(n.op_type == "Gemm" for n in onnx.load(str(out / "vision.onnx"), load_external_data=False).graph.node)
