"""`react embeddings-info EMBDIR [--release laion400m | --features b32 | --model NAME ...]`: the model of an embedding folder."""
from __future__ import annotations

import json

from react_core.cli import UserError


def add_model_arguments(parser, what: str) -> None:
    """--model/--pretrained/--weights naming the CLIP that made EMBDIR's embeddings."""
    parser.add_argument("--model", help=f"architecture of the CLIP that made EMBDIR's embeddings ({what}); needed "
                        "when EMBDIR has no embeddings.json (LAION's folders as released), checked against it otherwise")
    parser.add_argument("--pretrained", help="its open_clip pretrained tag (e.g. openai)")
    parser.add_argument("--weights", help="its weights file")
    parser.add_argument("--base-weights", help="where the base weights of an adapter in --weights are now, if they moved")


def register(subparsers):
    parser = subparsers.add_parser(
        "embeddings-info",
        help="show, or record once, which CLIP made an embedding folder's embeddings",
        description="LAION's released embedding folders (img_emb/, text_emb/, metadata/ with LAION's columns) and "
        "DataComp's pools (UID.parquet beside UID.npz, in POOL or POOL/metadata as download_upstream.py leaves them) "
        "name no model. This writes EMBDIR/embeddings.json naming it, after checking it against the folder's "
        "embedding dimension, so later commands (`react index`, `react retrieve`, `react export`) read the folder as it "
        "is, need no --model and refuse another. Known LAION releases: laion400m (OpenAI ViT-B-32, QuickGELU, 512-d), "
        "laion2b and laion5b (OpenAI ViT-L-14, 768-d). A DataComp pool holds two sets of features; --features picks "
        "one: b32 (b32_img/b32_txt, OpenAI ViT-B-32, 512-d) or l14 (l14_img/l14_txt, OpenAI ViT-L-14, 768-d). "
        "The model's weights must be loadable here (--pretrained downloads them, --weights reads a local file). "
        "Without options it prints what EMBDIR's embeddings.json records.",
    )
    parser.add_argument("emb", metavar="EMBDIR", help="embedding folder in LAION's layout, or a DataComp pool")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--release", choices=("laion400m", "laion2b", "laion5b"),
                        help="LAION release the folder comes from: names its model")
    source.add_argument("--features", choices=("b32", "l14"),
                        help="a DataComp pool's features to use (names their model unless --model is given)")
    add_model_arguments(parser, "or the release's")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from react_core.retrieval.embed import EmbeddingError, EmbeddingFolder, describe_identity, read_embedding_info, record_model

    try:
        if not (args.release or args.features or args.model or args.pretrained or args.weights):
            info = read_embedding_info(args.emb)
            print(json.dumps({k: info.get(k) for k in ("identity", "model", "dim", "release", "format", "features", "source")}, indent=2))
            return 0
        folder = EmbeddingFolder(args.emb, require_info=False, features=args.features)
        if folder.info:
            raise UserError(f"{args.emb}/embeddings.json exists already (it names {describe_identity(folder.info.get('identity'))}); "
                            "remove it to record another model")
        info = record_model(args.emb, args.model, args.pretrained, args.weights, args.release, features=args.features,
                            base_weights=args.base_weights)
    except EmbeddingError as error:
        raise UserError(str(error)) from error
    features = f" (DataComp's {args.features} features)" if args.features else ""
    print(f"{args.emb}/embeddings.json: {info['dim']}-dimensional embeddings{features} of {len(folder)} samples in "
          f"{len(folder.numbers)} shards, made by {describe_identity(info['identity'])}")
    return 0
