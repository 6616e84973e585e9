"""The RACG LightningModule: graphs built on TERAN's inputs, scored by the cross-graph encoder
(docs/methods.md §3; the package docstring of `methods.racg` says what comes from where)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgbench.data.batches import PairBatch, Text, TextBatch, Visual, VisualBatch
from fgbench.data.module import DataInfo
from fgbench.encoders.layers import masked_mean, text_inputs, zero_padding
from fgbench.encoders.regions import box_infos, region_extractor, region_inputs
from fgbench.encoders.token_text import build_token_text
from fgbench.encoders.word_windows import punctuation_table, scored_tokens, word_mask
from fgbench.features import Features
from fgbench.losses import hardest_negative_triplet
from fgbench.losses.warmup import summed_hinge_epochs, warmup_label
from fgbench.optim import OptimConfig
from fgbench.pairwise import PairwiseMethod
from fgbench.profiles import merge_overrides, resolve_profile
from fgbench.registry import register_method

from .config import PROFILES, PROVENANCE, RACGConfig, check_options
from .graph import EPS, Nodes, RelationGraph, spatial_edges
from .scorer import SIDES, bucketed_relation_scores, contexts, fit_adjacency, relation_scores


@register_method("racg")
class RACG(PairwiseMethod):
    """RACG: word and region graphs, a cross-graph relation encoder and a multi-head node similarity.

    Args:
        profile: "tiny" or "paper" (PROFILES).
        intra_graph: the intra-graph relation layers (False: nodes are not updated; Â is still built).
        spatial_edges: add the box-IoU edges to the image graph (forced off on data without boxes).
        cross_graph: the cross-graph relation encoder; False scores and trains the globals v̄·t̄ only.
        beta: β, the weight of the contexts spread along each modality's edges (0: none).
        heads: H of the multi-head similarity (None: the profile's).
        lambda_rec: λ_rec, the weight of the reconstruction loss (0: not built).
        global_aux: add the hinge on the globals v̄·t̄; needed by `rerank_k`.
        mask_same_image: pairs sharing a label are not negatives (off, as teran).
        word_span: teran's scored words: `drop_period` (default), `reference` or `all_words`.
        score_sides: S from both sides (docs/methods.md), or only the words' (`words`: mean_w cos(t_w, a'_w))
        or
            the regions' (`regions`) term: our diagnostic switch, not in docs/methods.md (read at scoring
            time).
        bert_path: the paper profile's BERT and tokenizer: a local folder or HF cache name (read offline).
        rerank_k: shortlist each query's top-k by v̄·t̄ and re-score it by S (a variant, recorded).
        optim: optimiser and schedule; default from the profile.
        loss_weights: weights of the loss terms `hinge`, `rec` (default λ_rec) and `global_hinge`.
        overrides, **fields: `RACGConfig` fields replacing the profile's.
    """

    provenance: ClassVar[str] = PROVENANCE
    tasks: ClassVar[frozenset[str]] = frozenset({"text-image", "image-text"})

    def __init__(
        self,
        profile: str = "tiny",
        intra_graph: bool = True,
        spatial_edges: bool = True,
        cross_graph: bool = True,
        beta: float = 0.5,
        heads: int | None = None,
        lambda_rec: float = 0.1,
        global_aux: bool = False,
        mask_same_image: bool = False,
        word_span: str = "drop_period",
        score_sides: str = "both",
        bert_path: str = "bert-base-uncased",
        rerank_k: int | None = None,
        optim: OptimConfig | None = None,
        loss_weights: dict[str, float] | None = None,
        overrides: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        values = merge_overrides(overrides, fields)
        if heads is not None:
            values = merge_overrides(values, {"heads": heads})
        hp = resolve_profile(PROFILES, profile, values, "racg")
        check_options(hp, beta, lambda_rec, word_span, cross_graph, global_aux, rerank_k, loss_weights)
        weights = {"rec": lambda_rec, **(loss_weights or {})}
        super().__init__(
            profile=profile,
            optim=optim or self._optim(hp),
            loss_weights=weights,
            rerank_k=rerank_k,
            store_dtype=hp.store_dtype,
        )
        self.save_hyperparameters()
        self.hp = hp
        self.intra_graph, self.spatial_edges, self.cross_graph = intra_graph, spatial_edges, cross_graph
        self.beta = float(beta)
        self.lambda_rec = float(lambda_rec) if cross_graph else 0.0  # no contexts, no L_rec
        self.global_aux, self.mask_same_image, self.word_span = global_aux, mask_same_image, word_span
        if score_sides not in SIDES:
            raise ValueError(f"score_sides={score_sides!r}: expected one of {', '.join(SIDES)}")
        self.score_sides = score_sides
        self.bert_path = bert_path
        self.text_encoder: nn.Module | None = None
        self.cnn: nn.Module | None = None  # the region extractor over pixels; None on region features
        self.box_in: nn.Linear | None = None  # Linear 5 -> D of the box geometry; None without boxes
        self.text_graph: RelationGraph | None = None
        self.image_graph: RelationGraph | None = None
        self.rec_t: nn.Linear | None = None  # W_t of L_rec
        self.rec_v: nn.Linear | None = None  # W_v of L_rec
        self.region_source = ""  # grid, roi, precomp or butd; recorded in result.json
        self.sum_warmup = 0  # summed-hinge epochs, resolved from the profile and the data at build
        self.effective_spatial = spatial_edges  # off on data without boxes (precomp)
        self.register_buffer("punct", torch.zeros(0, dtype=torch.bool), persistent=False)

    @staticmethod
    def _optim(hp: RACGConfig) -> OptimConfig:
        return hp.optim.with_lr_mult({"text_encoder.": hp.text_lr_mult} if hp.text_lr_mult != 1.0 else {})

    # -- building --------------------------------------------------------------------------------------------
    def build(self, data: DataInfo) -> None:
        """Text encoder (teran's), region extractor or region width, node projections, graphs, W_t / W_v."""
        if self.text_encoder is not None:
            return
        hp, dim = self.hp, self.hp.embed_dim
        tokenizer, self.text_encoder = build_token_text(hp, self.bert_path, data)
        self.punct = punctuation_table(tokenizer)
        self.cnn, width, self.region_source = region_extractor(data, hp.image, hp.roi_boxes)
        boxes = data.feature_source != "precomp"
        self.effective_spatial = self.spatial_edges and boxes
        self.sum_warmup = summed_hinge_epochs(hp.sum_warmup_epochs, data.family)
        self.text_in = nn.Linear(int(self.text_encoder.out_dim), dim)
        self.region_in = nn.Linear(width, dim)
        self.box_in = nn.Linear(5, dim) if boxes else None
        edges = self.cross_graph and self.beta > 0  # Â is needed by the spreading
        if self.intra_graph or edges:
            self.text_graph = RelationGraph(dim, hp.graph_layers, self.intra_graph)
            self.image_graph = RelationGraph(dim, hp.graph_layers, self.intra_graph)
        if self.lambda_rec > 0:
            self.rec_t, self.rec_v = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.processor = hp.image.processor(tokenizer, data.tiny_image_size)  # type: ignore[arg-type]

    # -- encoders --------------------------------------------------------------------------------------------
    def text_nodes(self, text: Text) -> Nodes:
        """The word graph: unit word nodes of teran's scored window, mask, Â [B, W, W], unit global t̄."""
        assert self.text_encoder is not None, "call build(datamodule.info()) first"
        ids, valid = text_inputs(text)
        x = self.text_in(self.text_encoder(text).tokens)
        x, words = scored_tokens(x, word_mask(ids, valid, self.word_span, self.punct), self.word_span)
        return self._graph(self.text_graph, x, words, None)

    def regions_of(self, visual: Visual) -> tuple[Tensor, Tensor | None, Tensor]:
        """(features [B, R, F], boxes [B, R, 4] or None, Bool mask [B, R]) from region data or pixels, as
        teran's (grid cells, RoI averages over the served boxes, precomp, butd)."""
        return region_inputs(visual, self.cnn, self.region_source, self.name)

    def image_nodes(self, visual: Visual) -> Nodes:
        """The region graph: unit region nodes [B, R, D] (zero where masked), mask, Â [B, R, R], unit v̄."""
        x, boxes, mask = self.regions_of(visual)
        return self.region_graph(x, boxes, mask)

    def region_graph(self, x: Tensor, boxes: Tensor | None, mask: Tensor) -> Nodes:
        """Nodes V0 = Linear(region) + Linear(box infos), then the image graph (with E_sp from the boxes)."""
        v = self.region_in(x)
        spatial = None
        if self.box_in is not None:
            if boxes is None:
                raise ValueError("racg was built on data with boxes, but the batch has none")
            v = v + self.box_in(box_infos(boxes.to(v.dtype)))
            if self.effective_spatial:
                spatial = spatial_edges(boxes, mask)
        return self._graph(self.image_graph, v, mask, spatial)

    def _graph(self, graph: RelationGraph | None, x: Tensor, mask: Tensor, spatial: Tensor | None) -> Nodes:
        adj = None
        if graph is not None:
            x, adj = graph(x, mask, spatial)
        x = zero_padding(F.normalize(x, dim=-1), mask)
        return Nodes(tok=x, mask=mask, adj=adj, glob=F.normalize(masked_mean(x, mask), dim=-1))

    # -- scoring ---------------------------------------------------------------------------------------------
    def relation(self, q: Nodes | Features, g: Nodes | Features, layout: str = "matrix") -> Tensor:
        """S of captions x images ([n_q, n_g]) or of aligned pairs ([n]) in this model's settings."""
        hp = self.hp
        beta = self.beta if self.text_graph is not None else 0.0
        return relation_scores(q, g, hp.heads, hp.attn_lambda, beta, layout, hp.score_chunk, self.score_sides)

    def fine_scores(self, q: Features, g: Features) -> Tensor:
        """S(caption, image) for a block; the globals' v̄·t̄ with cross-graph off (with `rerank_k`, `score`
        is v̄·t̄ too)."""
        if not self.cross_graph:
            return self.coarse_scores(q, g)
        if self.hp.score_buckets:
            hp = self.hp
            beta = self.beta if self.text_graph is not None else 0.0
            return bucketed_relation_scores(
                q, g, hp.heads, hp.attn_lambda, beta, hp.score_chunk, self.score_sides
            )
        return self.relation(q, g)

    def fine_pairs(self, q: Features, g: Features) -> Tensor:
        """S of aligned pairs (the re-rank scorer of the shortlist); v̄·t̄ with cross-graph off."""
        if not self.cross_graph:
            return self.coarse_pairs(q, g)
        return self.relation(q, g, "pairs")

    # -- training --------------------------------------------------------------------------------------------
    def losses(self, batch: PairBatch) -> dict[str, Tensor]:
        img, txt = self.image_nodes(batch.visual), self.text_nodes(batch.text)
        G = img.glob @ txt.glob.T
        S = self.relation(txt, img).T if self.cross_graph else G  # rows images, columns captions
        same = batch.label[:, None] == batch.label[None, :] if self.mask_same_image else None
        hardest = self.current_epoch >= self.sum_warmup
        terms = {"hinge": hardest_negative_triplet(S, self.hp.margin, hardest, positive_mask=same)}
        if self.global_aux:
            terms["global_hinge"] = hardest_negative_triplet(G, self.hp.margin, hardest, positive_mask=same)
        if self.rec_t is not None:
            terms["rec"] = self.reconstruction(txt, img).mean()
        return terms

    def reconstruction(self, txt: Nodes, img: Nodes) -> Tensor:
        """L_rec of each aligned (positive) pair [B]: mean_w (1 - cos(W_t a_w, sg(t_w))) + mean_r (1 -
        cos(W_v c_r, sg(v_r))); negatives never enter."""
        assert self.rec_t is not None and self.rec_v is not None
        with torch.autocast(txt.tok.device.type, enabled=False):
            a, c = contexts(txt.tok, txt.mask, img.tok, img.mask, self.hp.heads, self.hp.attn_lambda)
            rt = 1.0 - F.cosine_similarity(self.rec_t(a), txt.tok.detach().float(), dim=-1, eps=EPS)
            rv = 1.0 - F.cosine_similarity(self.rec_v(c), img.tok.detach().float(), dim=-1, eps=EPS)
        return masked_mean(rt[..., None], txt.mask)[:, 0] + masked_mean(rv[..., None], img.mask)[:, 0]

    @property
    def grad_clip_norm(self) -> float:
        """The recipe's gradient-norm clip (`grad_clip`, 2.0); the trainer's setting wins when given."""
        return self.hp.grad_clip

    # -- evaluation ------------------------------------------------------------------------------------------
    def _features(self, index: Tensor, nodes: Nodes, slots: int | None = None) -> Features:
        """Features for scoring: glob fp32; tok, and Â in `aux["adj"]` when the spreading uses it, stored in
        `store_dtype`; padded to `slots` nodes when given (gathering needs equal shapes)."""
        if not self.cross_graph:
            return Features(index=index, glob=nodes.glob.float())
        tok, mask, adj = nodes.tok, nodes.mask, nodes.adj
        if slots is not None:
            tok, mask = self.fixed_slots(tok, mask, slots)
            adj = fit_adjacency(adj, slots)
        aux = {"adj": self.stored(adj)} if self.beta > 0 and adj is not None else {}
        return Features(index=index, glob=nodes.glob.float(), tok=self.stored(tok), mask=mask, aux=aux)

    def encode_queries(self, batch: TextBatch) -> Features:
        return self._features(batch.index, self.text_nodes(batch.text))

    def encode_gallery(self, batch: VisualBatch) -> Features:
        slots = None if self.region_source == "grid" else self.hp.max_regions  # region counts may vary
        return self._features(batch.index, self.image_nodes(batch.visual), slots)

    def pool_queries(self, q: Features, groups: Tensor) -> tuple[Features, Tensor]:
        raise ValueError(
            "racg: class-level protocols (class_reed) average caption embeddings, which its pairwise scorer "
            "does not define; run it on f30k, coco, synth-scenes or the person datasets"
        )

    def run_details(self) -> dict[str, Any]:
        """The graph, scorer and region settings this run used."""
        return {
            "racg": {
                "intra_graph": self.intra_graph,
                "spatial_edges": self.effective_spatial,
                "cross_graph": self.cross_graph,
                "beta": self.beta,
                "heads": self.hp.heads,
                "lambda_rec": self.lambda_rec,
                "global_aux": self.global_aux,
                "score_sides": self.score_sides,
                "sum_warmup_epochs": warmup_label(self.sum_warmup),
                "regions": self.region_source,
                "word_span": self.word_span,
                "scoring": "global"
                if not self.cross_graph
                else "exact"
                if self.rerank_k is None
                else "rerank",
            },
        }
