"""``python -m slimpipe.evaluation run --model slimpipe --model_args pretrained=RUN --tasks ...``

lm-eval's own command line, with slimpipe's model registered first (lm-eval 0.4.13 has no plugin
discovery for models, so a bare ``lm_eval --model slimpipe`` cannot find it).
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from lm_eval.__main__ import cli_evaluate
    except ModuleNotFoundError as exc:
        sys.exit(f"lm-evaluation-harness is not installed ({exc.name}); pip install 'slimpipe[eval]'")
    import slimpipe.evaluation.lm  # noqa: F401  (registers --model slimpipe)

    cli_evaluate()


if __name__ == "__main__":
    main()
