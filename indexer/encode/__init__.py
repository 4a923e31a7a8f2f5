"""Turning photos into vectors.

Modules:
    encoders  the encoder registry: open_clip models, local files, hf-hub: and local-dir: models
    model_load  an open_clip model built straight from its checkpoint (meta parameters, mmap'd weights, no random init)
    decode    decoding photos (Pillow, HEIC, camera RAW) into RGB sized for the encoder, with EXIF facts
    pending   what an index run has left to encode and its report (no torch)
    run       the encode run: decode in workers, encode in batches, commit per batch
    precision  the CPU image-tower path: candidates probed once per encoder and machine, the choice (cached)
    precision_towers  the candidate towers (bf16/fp16 casts, int8 dynamic quantisation) and the user cache dir
    precision_onnx  onnxruntime / OpenVINO candidates for the image tower
    precision_record  which precision produced a collection's vectors (per run, in the manifest)
    cpu_features  the CPU's flags (/proc/cpuinfo) that decide which candidates are worth a probe
"""
