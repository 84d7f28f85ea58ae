"""Export a trained synthesizer to ONNX (:mod:`export.onnx_export`, needs torch) and run it without
torch or Ray (:mod:`export.runtime`, :mod:`export.runtime_io`: numpy, nibabel, onnxruntime).

The :mod:`export.card` model card travels inside the ``.onnx`` file. Nothing is imported here, so
``import export.runtime`` on an inference host never pulls in the torch half.
"""
