"""Networks, model cards, the model registry and ONNX export. Filled by issue #4."""
