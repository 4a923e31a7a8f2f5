"""Zero-shot and few-shot classification from stored vectors.

Modules:
    labels       label validation and prompt expansion (classnames x templates)
    templates    template sets (imagenet80, imagenet7, photos) and template files
    class_names  class names for ImageFolder sub-folders: clip_benchmark's lists by name, or a file
    weights      prompt-ensemble zero-shot weights and their cache key
    cache        the weights cache (memory LRU + .npy files)
    scoring      cosines, probabilities, top-k and thresholds over stored vectors
    fewshot      few-shot heads (prototype, linear probe) on top of zero-shot weights
    tagging      ZeroShotClassifier, classifying files, tagging a whole library, listing tags
    metrics      accuracy reports (top-1/top-5, per class, confusions, template comparison)
    split        the stratified split used by few-shot cross-validation and evaluation
    eval_folder  `photodex eval zeroshot`: accuracy on an ImageFolder layout
"""
