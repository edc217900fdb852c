"""Write a Vespa application package equivalent to a collection: schema, services.xml, query profile, models.

The files are written as text (not through pyvespa's object model) so they read like the examples in Vespa's
documentation:

* ``schemas/image_search.sd``: one ``tensor<float>(x[D])`` field per model (HNSW, angular) and a
  ``<slug>_similarity`` rank profile per field (``closeness`` first phase, ``query(<slug>_text)`` input);
* ``services.xml``: a container (search, document-api, one ``hugging-face-embedder`` per model) and a content
  cluster;
* ``models/``: each model's text tower in the embedder's form and the CLIP tokenizer file (:mod:`.embedder`);
* ``search/query-profiles/default.xml``: maps ``input=<text>`` (the parameter of Vespa's text-image sample app,
  which ``clipseek serve`` takes too) to ``embed(<slug>, @input)`` for every model's query tensor;
* ``search/query-profiles/<slug>.xml``: one per model, setting its rank profile, the ``nearestNeighbor`` YQL and
  the embedding, so ``queryProfile=<slug>&input=<text>`` works on Vespa as on ``clipseek serve``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Callable
from xml.sax.saxutils import escape

from ..collection import DOCUMENT_TYPE, Collection
from ..errors import VespaExportError
from ..schema import ATTRIBUTES, ModelNames
from .embedder import (
    ATTENTION_MASK,
    INPUT_IDS,
    POOLED_OUTPUT,
    TOKENIZER_FILE,
    EmbedderFiles,
    write_embedder,
    write_tokenizer,
)

_ATTRIBUTES = [(a.name, a.vespa) for a in ATTRIBUTES if a.name != "image_file_name"]


def schema_text(coll: Collection) -> str:
    hnsw = coll.hnsw
    lines = [f"schema {DOCUMENT_TYPE} {{", f"    document {DOCUMENT_TYPE} {{",
             "        field image_file_name type string {", "            indexing: attribute | summary", "        }"]
    for name, kind in _ATTRIBUTES:
        lines += [f"        field {name} type {kind} {{", "            indexing: attribute | summary", "        }"]
    for name, info in sorted(coll.fields.items()):
        lines += [
            f"        # model: {info.model}",
            f"        field {name} type tensor<float>(x[{info.dim}]) {{",
            "            indexing: attribute | index",
            "            attribute {", "                distance-metric: angular", "            }",
            "            index {", "                hnsw {",
            f"                    max-links-per-node: {hnsw.max_links_per_node}",
            f"                    neighbors-to-explore-at-insert: {hnsw.neighbors_to_explore_at_insert}",
            "                }", "            }", "        }",
        ]
    lines.append("    }")
    for name, info in sorted(coll.fields.items()):
        names = ModelNames.for_field(name)
        lines += [
            f"    rank-profile {names.rank_profile} inherits default {{",
            "        inputs {", f"            query({names.text_tensor}) tensor<float>(x[{info.dim}])", "        }",
            "        first-phase {", f"            expression: closeness(field, {name})", "        }",
            "    }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Embedder:
    """One ``hugging-face-embedder`` component: its id (the model slug) and what it embeds into."""

    id: str
    query_input: str
    files: EmbedderFiles


def embedder_xml(emb: Embedder) -> str:
    """The ``<component>`` of one embedder, as Vespa's embedding reference writes it."""
    return f"""        <!-- {escape(emb.query_input)}: CLIP's text tower, pooled on end-of-text inside the model -->
        <component id="{escape(emb.id)}" type="hugging-face-embedder">
            <transformer-model path="{escape(emb.files.model)}"/>
            <tokenizer-model path="models/{TOKENIZER_FILE}"/>
            <max-tokens>{emb.files.max_tokens}</max-tokens>
            <transformer-input-ids>{INPUT_IDS}</transformer-input-ids>
            <transformer-attention-mask>{ATTENTION_MASK}</transformer-attention-mask>
            <transformer-token-type-ids/>
            <transformer-output>{POOLED_OUTPUT}</transformer-output>
            <pooling-strategy>cls</pooling-strategy>
            <normalize>true</normalize>
        </component>
"""


def services_text(nodes: int = 1, redundancy: int = 1, embedders: list[Embedder] | None = None, *,
                  cloud: bool = False) -> str:
    """``services.xml``. On Vespa Cloud (``cloud``) and for one self-hosted node, node counts; for several
    self-hosted nodes, one ``<node hostalias=…>`` each (``<nodes count="3"/>`` would be read there as a
    single-node cluster), with the aliases of :func:`hosts_text`, as Vespa's multinode sample does."""
    components = "".join(embedder_xml(e) for e in embedders or [])
    content_nodes = max(nodes, redundancy)
    admin = ""
    if cloud or content_nodes == 1:
        container_nodes = f'        <nodes count="{nodes}"/>\n'
        content = f'        <nodes count="{content_nodes}"/>\n'
    else:
        aliases = [f"node{i}" for i in range(content_nodes)]
        config = aliases[:3] if len(aliases) >= 3 else aliases[:1]  # an odd number of config servers
        admin = ("    <admin version=\"2.0\">\n        <adminserver hostalias=\"node0\"/>\n        <configservers>\n"
                 + "".join(f'            <configserver hostalias="{a}"/>\n' for a in config)
                 + "        </configservers>\n        <cluster-controllers>\n"
                 + "".join(f'            <cluster-controller hostalias="{a}"/>\n' for a in config)
                 + "        </cluster-controllers>\n    </admin>\n")
        container_nodes = ("        <nodes>\n" + "".join(f'            <node hostalias="{a}"/>\n'
                                                          for a in aliases[:max(nodes, 1)]) + "        </nodes>\n")
        content = ("        <nodes>\n" + "".join(f'            <node hostalias="{a}" distribution-key="{i}"/>\n'
                                                  for i, a in enumerate(aliases)) + "        </nodes>\n")
    return f"""<?xml version="1.0" encoding="utf-8" ?>
<services version="1.0" xmlns:deploy="vespa" xmlns:preprocess="properties">
{admin}    <container id="default" version="1.0">
        <search/>
        <document-api/>
{components}{container_nodes}    </container>
    <content id="{escape(DOCUMENT_TYPE)}" version="1.0">
        <min-redundancy>{redundancy}</min-redundancy>
        <documents>
            <document type="{escape(DOCUMENT_TYPE)}" mode="index"/>
        </documents>
{content}    </content>
</services>
"""


def hosts_text(names: list[str]) -> str:
    """``hosts.xml`` for a self-hosted cluster: each alias of ``services.xml`` on the host that runs it."""
    hosts = "".join(f'    <host name="{escape(name)}">\n        <alias>node{i}</alias>\n    </host>\n'
                    for i, name in enumerate(names))
    return f"""<?xml version="1.0" encoding="utf-8" ?>
<!-- The hosts of a self-hosted Vespa cluster: replace each name with the fully qualified name of a machine
     ("hostname -f" on it), unless they came from a hosts file. node0 also runs the admin and config server. -->
<hosts>
{hosts}</hosts>
"""


def validation_overrides_text(ids: list[str], today: date | None = None) -> str:
    """``validation-overrides.xml`` allowing ``ids`` for 29 days: Vespa refuses an ``until`` more than 30 days
    ahead and ignores an override once its date has passed, so a later deploy is checked again."""
    until = (today or date.today()) + timedelta(days=29)
    allows = "".join(f"    <allow until=\"{until.isoformat()}\">{escape(i)}</allow>\n" for i in ids)
    return f"""<?xml version="1.0" encoding="utf-8" ?>
<!-- Changes Vespa would otherwise refuse, allowed until {until.isoformat()} (at most 30 days ahead; after that
     date the checks apply again). On Vespa Cloud, production with one node or redundancy 1 needs
     'redundancy-one'. Written because it was asked for (clipseek vespa export, option validation-override). -->
<validation-overrides>
{allows}</validation-overrides>
"""


def query_profile_text(embedders: list[Embedder]) -> str:
    """``default.xml``: ``input=<text>`` becomes every model's query tensor (a request's own tensor wins)."""
    fields = "".join(
        f'    <field name="ranking.features.query({escape(e.query_input)})">embed({escape(e.id)}, @input)</field>\n'
        for e in embedders)
    return f"""<?xml version="1.0" encoding="utf-8" ?>
<!-- `input=<text>`, as Vespa's text-image sample app and `clipseek serve` take it, embedded for each model.
     A request that sends input.query(<slug>_text) itself overrides these. -->
<query-profile id="default">
{fields}</query-profile>
"""


def model_query_profile_text(emb: Embedder) -> str:
    """``<slug>.xml``: ``queryProfile=<slug>&input=<text>`` searches that model's field, as in ``clipseek serve``."""
    from ..query import profile_yql

    slug = emb.id
    profile = ModelNames(slug).rank_profile
    return f"""<?xml version="1.0" encoding="utf-8" ?>
<!-- queryProfile={escape(slug)}&input=<text>: the text embedded by this model, its nearest images, ranked by
     closeness. The request's own yql, ranking.profile or input.query({escape(emb.query_input)}) win. -->
<query-profile id="{escape(slug)}">
    <field name="ranking.profile">{escape(profile)}</field>
    <field name="yql">{escape(profile_yql(slug))}</field>
    <field name="ranking.features.query({escape(emb.query_input)})">embed({escape(slug)}, @input)</field>
</query-profile>
"""


def export_package(coll: Collection, out: Path, *, nodes: int = 1, redundancy: int = 1, embedders: bool = True,
                   cloud: bool = False, hosts: list[str] | None = None, validation_overrides: list[str] | None = None,
                   progress: Callable[[str], None] | None = None) -> list[Path]:
    """Write the package into ``out``; returns the files written.

    Self-hosted with several nodes (``nodes`` or ``redundancy`` > 1, not ``cloud``), ``hosts.xml`` names their
    machines: ``hosts`` (one per content node), else placeholders a person replaces.

    With ``embedders`` (the default) each field's model is resolved (fetched and exported on first use, like
    ``clipseek index`` does) and its text tower written under ``models/`` for Vespa's embedder.
    """
    from ..models.loader import resolve
    from ..models.modeldir import read_model_dir_spec

    say = progress or (lambda _msg: None)
    comps: list[Embedder] = []
    written: list[Path] = []
    if embedders:
        for name, info in sorted(coll.fields.items()):
            names = ModelNames.for_field(name)
            slug = names.slug
            say(f"exporting the text tower of {info.model} for Vespa's embedder")
            folder = resolve(info.model, progress=say)
            spec = read_model_dir_spec(folder)
            files = write_embedder(folder / "text.onnx", out, slug, spec.context_length)
            if files.dim != info.dim:
                raise VespaExportError(f"model {info.model} embeds into {files.dim} dims but field {name} holds "
                                       f"{info.dim}-dim vectors: the collection records another model under that "
                                       "name; re-index the field or export with --no-embedders")
            comps.append(Embedder(slug, names.text_tensor, files))
            written.append(out / files.model)
        if comps:
            written.append(write_tokenizer(out))
    content_nodes = max(nodes, redundancy)
    if hosts is not None and (cloud or len(hosts) != content_nodes):
        raise VespaExportError(f"--hosts names {len(hosts)} machines but the cluster has {content_nodes} content "
                               "nodes" if not cloud else "--hosts is for self-hosted clusters, not --cloud")
    files_text = {
        out / "schemas" / f"{DOCUMENT_TYPE}.sd": schema_text(coll),
        out / "services.xml": services_text(nodes, redundancy, comps, cloud=cloud),
    }
    if not cloud and content_nodes > 1:
        files_text[out / "hosts.xml"] = hosts_text(hosts or [f"node{i}.example.internal" for i in range(content_nodes)])
    if validation_overrides:
        files_text[out / "validation-overrides.xml"] = validation_overrides_text(validation_overrides)
    if comps:
        files_text[out / "search" / "query-profiles" / "default.xml"] = query_profile_text(comps)
        for emb in comps:
            files_text[out / "search" / "query-profiles" / f"{emb.id}.xml"] = model_query_profile_text(emb)
    for path, text in files_text.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return sorted([*files_text, *written])
