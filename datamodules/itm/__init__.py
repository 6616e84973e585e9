"""Flickr30K and MS-COCO image-text matching (docs/data/itm.md): DataModules `f30k`, `coco`.

Three inputs, chosen by `feature_source` and recorded in every EvalSpec's info:
- `images`: Karpathy's split JSON (`dataset_{flickr30k,coco}.json` from `caption_datasets.zip`) + raw images.
  Train = train + restval, val, test; the order of `images[]` is kept (it defines COCO's 1K folds). Caption
  policy `first5` (default) or `all` (COCO test 25,010 captions). `with_boxes=True` adds the bottom-up boxes
  of `features_36/bu_box/<id>.npy` (id = index in images[] for Flickr30K, cocoid for COCO), normalised by the
  image size, so region-based methods can pool given boxes over raw images: items have `pixels` and `boxes`.
- `precomp`: SCAN's precomputed BUTD-36 features (kuanghueilee/SCAN; `{split}_ims.npy` memory-mapped,
  `_caps.txt` with 5 or 1 lines per image, `_ids.txt`); no boxes. Val = `dev`, test = `test` (Flickr30K) or
  `testall` (COCO: its `test` is one 1K subset, refused unless `force=True`).
- `butd`: mesnico/TERAN's per-image BUTD features (`features_36/bu_att/<id>.npz` key "feat",
  `bu_box/<id>.npy` pixel boxes divided by (w, h, w, h)); COCO captions, sizes and splits from
  `captions_{train,val}2014.json` + `coco_{split}_ids.npy`, Flickr30K from the Karpathy JSON with sizes read
  from the image headers (cached as `images/sizes.json`). Optional relevance matrices (NDCG) go into info.

Conventions. Labels are image positions within the split (0..N-1, file order). Validation takes the first
`val_captions` (5,000) val captions and their images and is scored as one f30k_1k-style fold. Test uses
`f30k_1k` (Flickr30K) or `coco_protocol` = `coco_5k` | `coco_1k_5fold` (COCO; folds = images 1000f..1000f+999
in file order, computed by the evaluator).

Orientation. The loaders serve queries = captions (TextDataset) and gallery = images (VisualDataset); the
method scores captions x images and the base method transposes, because the image-text protocols take ROWS =
IMAGES and COLUMNS = CAPTIONS: `EvalSpec.query_labels` = arange(N) (one row per image) and `gallery_labels` =
the image of each caption; info says `"orientation": "rows=images"`.

Reuse. Every path is built from `self.root / self.folder` (or `precomp_folder`), so a dataset written in the
Flickr30K Karpathy layout under another folder subclasses `Flickr30KDataModule` overriding only `name`,
`folder` and `expected`; its error messages show the layout of its own folder.
"""

from .common import SplitIndex, load_relevances
from .modules import COCODataModule, Flickr30KDataModule, ITMDataModule

__all__ = ["COCODataModule", "Flickr30KDataModule", "ITMDataModule", "SplitIndex", "load_relevances"]
