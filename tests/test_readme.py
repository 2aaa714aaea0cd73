"""The Python examples of README.md run as written (skipped where the tests
run outside the source tree, as .ci/wheel.sh runs them)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if README.exists() else []


@pytest.mark.skipif(not README.exists(), reason="README.md is not beside tests/ (tests run outside the tree)")
@pytest.mark.parametrize(
    "code", EXAMPLES or [""], ids=[f"example{i}" for i in range(len(EXAMPLES))] or ["none"]
)
def test_readme_example_runs(code):
    assert code, "README.md has no Python example"
    for package in ("torch", "transformers"):
        if re.search(rf"^(import|from) {package}\b", code, flags=re.M):
            pytest.importorskip(package, reason=f"this example needs {package}")
    if "from_pretrained(name" in code:
        pytest.skip("this example downloads a model from the Hugging Face Hub")
    exec(compile(code, str(README), "exec"), {})
