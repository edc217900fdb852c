"""Write a Vespa application package equivalent to a collection: schema, services.xml, query profile.

The files are written as text (not through pyvespa's object model) so they read like the examples in Vespa's
documentation: `schemas/image_search.sd` with one `tensor<float>(x[D])` field per model (HNSW, angular) and a
`<slug>_similarity` rank profile per field (`closeness` first phase, `query(<slug>_text)` input).
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

from ..collection import DOCUMENT_TYPE, Collection

_ATTRIBUTES = [("path", "string"), ("size", "long"), ("mtime", "double"), ("content_hash", "string"),
               ("width", "int"), ("height", "int"), ("format", "string"), ("indexed_at", "double")]


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
        slug = name[: -len("_image")]
        lines += [
            f"    rank-profile {slug}_similarity inherits default {{",
            "        inputs {", f"            query({slug}_text) tensor<float>(x[{info.dim}])", "        }",
            "        first-phase {", f"            expression: closeness({name})", "        }",
            "    }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def services_text(nodes: int = 1, redundancy: int = 1) -> str:
    return f"""<?xml version="1.0" encoding="utf-8" ?>
<services version="1.0" xmlns:deploy="vespa" xmlns:preprocess="properties">
    <container id="default" version="1.0">
        <search/>
        <document-api/>
        <nodes count="{nodes}"/>
    </container>
    <content id="{escape(DOCUMENT_TYPE)}" version="1.0">
        <min-redundancy>{redundancy}</min-redundancy>
        <documents>
            <document type="{escape(DOCUMENT_TYPE)}" mode="index"/>
        </documents>
        <nodes count="{max(nodes, redundancy)}"/>
    </content>
</services>
"""


def export_package(coll: Collection, out: Path, *, nodes: int = 1, redundancy: int = 1) -> list[Path]:
    """Write the package into ``out``; returns the files written."""
    files = {
        out / "schemas" / f"{DOCUMENT_TYPE}.sd": schema_text(coll),
        out / "services.xml": services_text(nodes, redundancy),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return sorted(files)
