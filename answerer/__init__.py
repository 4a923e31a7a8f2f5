"""photodex answerer: a vision-language model answers questions over retrieved photos.

Modules:
    vlm         VLM: lazy thread-safe loading (AutoModelForImageTextToText + AutoProcessor), chat prompts, generate
    budget      ImageBudget: photos per prompt, tokens per photo, image-token counting, over-context refusal
    citations   parse cited photo ids ([#12]) and check them against the photos shown
    rag         Answerer: question → retrieval → answer → citations (joint / per-photo strategies)
    streaming   TextIteratorStreamer: answer text as it is generated, equal to the non-streamed text
    rerank      re-rank search results by the VLM's P(yes) to "Does this photo show {query}?"
    preprocess  batch preprocessing without the processor's per-call waste, checked against the processor
    captions    `photodex caption --all`: caption the collection and store the captions (resumable, locked)
    pope        POPE object-hallucination evaluation (`photodex eval pope`)
    settings    the VLM's settings part (PHOTODEX_VLM*)
"""
