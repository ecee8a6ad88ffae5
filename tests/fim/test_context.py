"""Context ranking: deterministic, explainable, and Python imports resolved to their definitions."""

from __future__ import annotations

import random

from fim.context import (debug_snippets, python_imports, rank_snippets, workspace_python_imports)
from fim.request import FileContext

CURRENT = '''import math

def area(shape):
    radius = shape.radius
    
'''
CURSOR = CURRENT.index("    \n") + 4

GEOMETRY = FileContext("src/geometry.py", """class Circle:
    def __init__(self, radius):
        self.radius = radius

def circle_area(radius):
    return math.pi * radius * radius

def shape_area(shape):
    return circle_area(shape.radius)
""")
NETWORK = FileContext("src/network.py", "import socket\n\ndef connect(host, port):\n    return socket.create_connection((host, port))\n")
COPY = FileContext("src/copy_of_network.py", NETWORK.text)


def _rank(files, text=CURRENT, cursor=CURSOR, path="src/app.py"):
    return rank_snippets(path, text, cursor, "python", tuple(files))[0]


def test_similar_file_ranks_first_and_unrelated_is_dropped():
    ranked = _rank([NETWORK, GEOMETRY])
    assert ranked[0].path == "src/geometry.py" and ranked[0].status == "candidate"
    unrelated = next(s for s in ranked if s.path == "src/network.py")
    assert unrelated.status == "dropped" and unrelated.reason.startswith("similarity 0.000 below")


def test_ranking_is_deterministic_and_independent_of_file_order():
    files = [NETWORK, GEOMETRY, COPY, FileContext("src/more.py", GEOMETRY.text.replace("Circle", "Disk"))]
    expected = [(s.path, s.start_line, s.score, s.status, s.reason) for s in _rank(files)]
    for seed in range(5):
        shuffled = files[:]
        random.Random(seed).shuffle(shuffled)
        assert [(s.path, s.start_line, s.score, s.status, s.reason) for s in _rank(shuffled)] == expected


def test_duplicates_are_dropped_with_the_first_copy_named():
    text = "def reconnect(host, port):\n    sock = connect(host, port)\n    \n"
    ranked = _rank([NETWORK, COPY], text=text, cursor=len(text) - 1)
    by_path = {s.path: s for s in ranked}
    assert by_path["src/copy_of_network.py"].status == "candidate"  # equal scores: ties go by path
    assert by_path["src/network.py"].reason == "duplicate of src/copy_of_network.py:1-5"


def test_text_already_in_the_current_file_is_dropped():
    text = NETWORK.text + "\ndef reconnect(host, port):\n    \n"
    ranked = _rank([NETWORK], text=text, cursor=len(text) - 1)
    assert [s.reason for s in ranked] == ["already in the current file"]


def test_overlapping_windows_of_one_file_are_dropped():
    long_file = FileContext("src/long.py", "\n".join(f"radius_{i} = shape.radius * {i}" for i in range(40)))
    ranked = _rank([long_file])
    overlapping = [s for s in ranked if s.reason.startswith("overlaps higher-ranked lines")]
    assert overlapping
    kept = [s for s in ranked if s.status == "candidate"]
    for a in kept:
        for b in kept:
            assert a is b or a.end_line < b.start_line or b.end_line < a.start_line


def test_python_imports_parsed_with_tree_sitter():
    text = "import os.path as p\nfrom .util import helper, Thing as T\nfrom .. import sibling\ndef f():\n    import json\n"
    found = [(i.module, i.level, i.names) for i in python_imports(text)]
    assert found == [("os.path", 0, ()), ("util", 1, ("helper", "Thing")), ("", 2, ("sibling",)), ("json", 0, ())]


def test_imported_definitions_come_first():
    utils = FileContext("pkg/utils.py", "X = 1\n\ndef helper(a, b):\n    '''Add.'''\n    return a + b\n\nclass Other:\n    pass\n")
    models = FileContext("pkg/models.py", "class Model:\n    '''A model.'''\n    def fit(self, data):\n        return self\n"
                         + "".join(f"    def method{i}(self):\n        return {i}\n" for i in range(20)))
    text = "from .utils import helper\nimport pkg.models\n\nresult = helper(1, 2)\n"
    ranked = rank_snippets("pkg/app.py", text, len(text), "python", (models, utils, NETWORK))[0]
    imports = [s for s in ranked if s.source == "import"]
    assert [s.path for s in imports] == ["pkg/utils.py", "pkg/models.py"]
    assert imports[0].text == "def helper(a, b):\n    '''Add.'''\n    return a + b" and imports[0].start_line == 3
    outline = imports[1].text  # a long module imported whole is shown as an outline of its signatures
    assert outline.startswith("class Model:\n    '''A model.'''\n    def fit(self, data):\n        ...\n    def method0(self):\n")
    assert "return self" not in outline
    shown, left_out = debug_snippets(ranked)
    assert shown[0]["source"] == "import" and shown[0]["reason"] == "definition of helper imported by the current file"
    assert left_out == 0


def test_workspace_imports_are_read_from_disk(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "shapes.py").write_text("def square(x):\n    return x * x\n")
    (tmp_path / "binary.py").write_bytes(b"\xff\xfe\x00")
    main = tmp_path / "main.py"
    text = "from pkg.shapes import square\nimport binary\nimport os\n"
    main.write_text(text)
    found = {f.path: f.text for f in workspace_python_imports(str(main), text)}
    assert found == {str(tmp_path / "pkg" / "shapes.py"): "def square(x):\n    return x * x\n"}
