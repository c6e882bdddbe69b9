"""Export: ONNX files of the prefix encoder and the unrolled flow loop (see onnx_export.py)."""
