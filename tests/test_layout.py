"""The package's layout: each stage imports only the stages before it (no back-edges, no circles)."""

from __future__ import annotations

import ast
from pathlib import Path

import ecovae

PACKAGE = Path(ecovae.__file__).parent

# The pipeline, bottom to top: a module may import modules of lower layers only.
LAYERS = [
    {
        "files",
        "progress",
        "birdnet",
        "simulate",
        "outputs",
        "options",
        "host",
    },  # helpers that know nothing of the pipeline
    {"audio"},
    {"spectrogram"},
    {"survey", "plots", "corpus"},
    {"model", "logmel_cache", "excerpts"},
    {"run", "latents", "summary", "pretrained"},
    {"recorder_offsets", "precision", "parts"},
    {"train", "file_encoding"},
    {"encode_ray"},
    {"encode"},
    {"descriptors", "novelty", "diel", "latent_map"},
    {"baselines"},
    {"evaluate"},
    {"hardware", "interpret"},
    {"report", "explore"},
    {"pipeline", "explore_page"},
    {"cli"},
    {"__main__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def ecovae_imports(path: Path) -> set[str]:
    """The ecovae modules a file imports, at the top or inside functions (a lazy import is still a dependency)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ecovae":
            if node.module == "ecovae":  # from ecovae import plots / __version__
                found |= {a.name for a in node.names if (PACKAGE / f"{a.name}.py").is_file()}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ecovae.")}
    return found


def test_every_module_has_a_place_in_the_pipeline():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(LAYER), f"unplaced: {sorted(modules - set(LAYER))}, gone: {sorted(set(LAYER) - modules)}"


def test_no_module_imports_a_later_stage():
    back_edges = [
        f"{p.stem} (layer {LAYER[p.stem]}) imports {m} (layer {LAYER[m]})"
        for p in sorted(PACKAGE.glob("*.py"))
        if p.stem != "__init__"
        for m in sorted(ecovae_imports(p))
        if m != p.stem and LAYER[m] >= LAYER[p.stem]
    ]
    assert back_edges == []


def test_only_training_and_the_command_line_use_the_training_code():
    users = {p.stem for p in PACKAGE.glob("*.py") if "train" in ecovae_imports(p)}
    assert users <= {"cli", "pipeline"}


def test_the_library_leaves_the_users_plotting_backend_alone(tmp_path):
    """Importing ecovae and drawing a figure must not switch matplotlib's backend (a notebook's, say)."""
    import subprocess
    import sys

    code = (
        "import matplotlib; matplotlib.use('pdf')\n"
        "import numpy as np, ecovae.cli, ecovae.report\n"
        "from ecovae import plots\n"
        f"plots.confusion(np.array([[3, 1], [0, 4]]), ['a', 'b'], 'test', path=__import__('pathlib').Path({str(tmp_path / 'c.png')!r}))\n"
        "print(matplotlib.get_backend())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "pdf"
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_file_the_documentation_cites_is_in_the_repository():
    import re

    repo = PACKAGE.parents[1]
    docs = [repo / "README.md", *sorted((repo / "docs").glob("*.md")), repo / "bench" / "README.md"]
    cited = {
        (doc, name)
        for doc in docs
        for name in re.findall(r"[\w./-]+\.(?:md|py|sh|png|json|toml)\b", doc.read_text())
        if "/" in name or name.endswith(".md")
    }
    missing = [
        f"{doc.name}: {name}"
        for doc, name in sorted(cited)
        if not any((base / name).exists() for base in (repo, doc.parent, repo / "src" / "ecovae", repo / "bench"))
        and not name.startswith(("http", "/", "~", "."))
    ]
    assert len(cited) > 20 and missing == []
