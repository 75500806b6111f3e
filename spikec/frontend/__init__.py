"""Front end: Hugging Face multimodal checkpoints -> ONNX graphs + manifest.

    spikec.frontend.export.export(source, outdir)      # `spikec export`
    spikec.frontend.generate.OrtGenerator(outdir)      # reference greedy generation on ORT
"""
