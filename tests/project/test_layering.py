"""The engine core plugs backends in behind interfaces: importing it (and running an embedded
run) must not import Celery, Redis or the S3 client."""

from __future__ import annotations

import subprocess
import sys


def test_core_does_not_import_distributed_clients(tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = (
        "import sys\n"
        "import mfm_dist, mfm_dist.engine, mfm_dist.io.factory, mfm_dist.cli.main\n"
        "from click.testing import CliRunner\n"
        f"r = CliRunner().invoke(mfm_dist.cli.main.cli, ['--home', {str(tmp_path)!r}, 'run', "
        "'fanout_demo', '--input', '{\"items\": 5}', '--fan-out', '2'])\n"
        "assert r.exit_code == 0, r.output\n"
        "loaded = [m for m in ('celery', 'kombu', 'redis', 'minio') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
