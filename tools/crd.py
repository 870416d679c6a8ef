"""Write the Rollout CRD generated from the pydantic models into the chart (``--check``: only compare).

python tools/crd.py           # regenerate charts/modship/crds/rollouts.modship.dev.yaml
python tools/crd.py --check   # exit 1 when the chart's CRD is not what the models generate
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controller.spec import crd  # noqa: E402


def main(argv: list[str]) -> int:
    path = REPO / crd.CHART_PATH
    text = crd.crd_yaml()
    if "--check" in argv:
        same = path.exists() and path.read_text(encoding="utf-8") == text
        verdict = "up to date" if same else "differs from the models: run python tools/crd.py"
        sys.stdout.write(f"{path.relative_to(REPO)}: {verdict}\n")
        return 0 if same else 1
    path.write_text(text, encoding="utf-8")
    sys.stdout.write(f"wrote {path.relative_to(REPO)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
