"""Evaluation as the field reports it: retrieval recall on caption files, clip_benchmark's result shape.

Modules:
    captions        caption files (Karpathy split JSON, COCO captions JSON) read into images + captions
    recall          image<->text Recall@K exactly as clip_benchmark's ``zeroshot_retrieval`` computes it
    image_vectors   image files encoded through the index's decode/encoder path, cached per encoder + file
    retrieval_eval  ``photodex eval retrieval``: caption file + image folder -> recall report
    clip_benchmark  results written in clip_benchmark's JSON shape (its leaderboard files)
    zeroshot_eval   ``photodex eval zeroshot``: clip_benchmark's figures over the index encode path (imports classify)
    compare         several encoders side by side: figures, speed, embedding size, disk per 1M photos
"""
