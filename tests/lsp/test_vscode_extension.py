"""editors/vscode: `vsce package` runs without a prompt and builds a .vsix that activates on its languages only;
activate() (with stand-ins for the `vscode` modules) gives the language client what the manifest promises.

Needs node and npm; `npm ci` fetches vscode-languageclient and @vscode/vsce from the npm registry.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.lsp.harness import REPO

EXTENSION = REPO / "editors" / "vscode"
LANGUAGES = {"python", "javascript", "javascriptreact", "typescript", "typescriptreact", "go", "rust", "java", "c",
             "cpp", "lua", "shellscript"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A copy of the extension with its npm dependencies installed from the lockfile."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("node and npm are not installed")
    copy = tmp_path_factory.mktemp("vscode") / "extension"
    shutil.copytree(EXTENSION, copy, ignore=shutil.ignore_patterns("node_modules", "*.vsix"))
    run = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=copy, capture_output=True, text=True,
                         timeout=600, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr[-2000:]
    return copy


def test_vsce_package_builds_the_vsix_without_prompting(installed):
    # stdin closed: a prompt (missing LICENSE, repository, ...) would fail instead of waiting
    run = subprocess.run(["npm", "run", "-s", "package"], cwd=installed, capture_output=True, text=True,
                         timeout=300, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, (run.stdout + run.stderr)[-2000:]
    (vsix,) = installed.glob("codegemma-*.vsix")
    with zipfile.ZipFile(vsix) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("extension/package.json"))
    assert {"extension/src/extension.js", "extension/readme.md", "extension/LICENSE.txt",
            "extension/node_modules/vscode-languageclient/package.json"} <= names
    assert not any(name.startswith("extension/node_modules/@vscode/vsce/") for name in names)  # dev tool only
    assert {e.removeprefix("onLanguage:") for e in manifest["activationEvents"]} == LANGUAGES
    properties = manifest["contributes"]["configuration"]["properties"]
    assert properties["codegemma.command"]["scope"] == "machine"


def _activate(installed: Path, settings: dict) -> dict:
    run = subprocess.run(["node", str(REPO / "tests/lsp/node/activate.cjs"), str(installed), json.dumps(settings)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


def test_activation_serves_its_languages_and_leaves_null_settings_out(installed):
    seen = _activate(installed, {"command": ["codegemma", "lsp", "--model", "/models/cg"], "model": None,
                                 "maxTokens": 32, "speculative": None, "context": True})
    # exactly the command: no transport, which would make the client append --stdio to it
    assert seen["serverOptions"] == {"command": "codegemma", "args": ["lsp", "--model", "/models/cg"]}
    options = seen["clientOptions"]
    # null model / speculative are not sent: the --model of the command stays in force
    assert options["initializationOptions"] == {"maxTokens": 32, "context": True}
    assert {s["language"] for s in options["documentSelector"]} == LANGUAGES
    assert {s["scheme"] for s in options["documentSelector"]} == {"file", "untitled"}
    assert seen["handlers"] == ["codegemma/resync"]  # the server's request for a document's whole text
    # setting the model back to null is a request for the default: sent as null on the change
    (change,) = seen["notifications"]
    assert change["method"] == "workspace/didChangeConfiguration" and change["params"]["settings"]["model"] is None
