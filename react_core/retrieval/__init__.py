"""Retrieval, REACT's first stage: embed a web corpus, index it with FAISS, retrieve the pairs
most relevant to a task from its class names alone, and turn them into a training set.

embed.py     corpus -> LAION-layout embedding folder (`react embed`); the model behind one of
             LAION's folders or DataComp's pools, named or recorded once (`react embeddings-info`)
             and checked; `EmbeddingFolder`, the one reader of every layout
embed_ray.py the same embedding on a Ray cluster (`react embed --ray`)
layouts.py   the files of LAION's layout and of DataComp's pools, arrays read without unpickling
index.py     embedding folder -> the index chosen, built and tuned for it (`react index`)
planning.py  what an index of n x d vectors would take, before building it (`react index --plan`)
tuning.py    an index against exact search: recall, search breadth, speed ratios with bounds
ann.py       FAISS index files: read with checks, searched, filled by parallel workers, merged,
             re-ranked from the embeddings on disk
classes.py   class lists (text, JSON, ImageNet-1K, COCO/LVIS categories) -> queries
retrieve.py  queries -> per-class hits -> filtered subset (`react retrieve`); blocklists, also on
             an older subset (`react filter`)
export.py    subset -> webdataset shards, image folder or URL list (`react export`)
report.py    subset -> HTML page with images, captions and histograms (`react report`)
"""
from react_core.retrieval.embed import (
    EmbeddingError,
    EmbeddingFolder,
    embed_corpus,
    matches_model,
    read_embedding_info,
)

__all__ = ["EmbeddingError", "EmbeddingFolder", "embed_corpus", "matches_model", "read_embedding_info"]
