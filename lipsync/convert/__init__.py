"""Conversion of the authors' PyTorch checkpoints to ONNX files lipsync can run.

Needs torch, an optional extra (``pip install 'lipsync[convert]'``); nothing else in lipsync
imports it. :mod:`lipsync.convert.wav2lip` holds our implementation of the published Wav2Lip
generator, its checkpoint loader, the ONNX export and the torch-vs-ONNX parity check;
:func:`lipsync.models.import_checkpoint` strings them together and installs the result.
"""
