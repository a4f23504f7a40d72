"""Regenerate the README's dashboard screenshots (``docs/screenshots/*.png``).

Runs the demo, serves it with the real TensorBoard on 127.0.0.1 and photographs the
scalars, histograms, images and custom-scalars dashboards in headless Chromium (Debian's
``chromium`` driven by pip ``playwright``; needs ``pip install -e ".[test]"``)::

    python docs/make_screenshots.py [--out docs/screenshots] [--epochs 10]
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.dashboard.screenshots import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
