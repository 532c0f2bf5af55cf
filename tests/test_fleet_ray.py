"""The Ray Serve engine (engine/ray) against a real Ray cluster, with the tiny demo models on CPU
replicas: affinity under load, progress and cancel, replicas killed mid-job, a full HTTP request
through a gateway with `engine = "ray"`.

Ray binds every interface and reaches out when it starts, so the scenarios (tests/fleet/
ray_scenarios.py) run in a pytest of their own inside a fresh network namespace with only loopback
up (tests/support/ray_cluster.py), which starts the cluster, the workers and the gateways there
and stops them at the end. Each scenario is reported here as its own test. Skipped, with the
reason, where `unshare -n` cannot make a namespace.
"""

from __future__ import annotations

import ast
import sys
import xml.etree.ElementTree as ElementTree

import pytest

from tests.support.ray_cluster import ROOT, run_in_namespace, unavailable

SCENARIOS_FILE = ROOT / "tests" / "fleet" / "ray_scenarios.py"
SCENARIOS = [
    node.name
    for node in ast.parse(SCENARIOS_FILE.read_text()).body
    if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
]
# The cluster, two replicas importing torch and the scenarios: about 2 minutes on 2 idle cores.
TIMEOUT_S = 420

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """Each scenario's outcome (passed, failed, skipped) and its message, from one run."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    report = tmp_path_factory.mktemp("fleet") / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    run = run_in_namespace([*command, str(SCENARIOS_FILE.relative_to(ROOT))], TIMEOUT_S)
    assert report.exists(), (
        f"the scenarios did not run (exit {run.returncode})\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    )
    outcomes: dict[str, tuple[str, str]] = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = f"{element.get('message', '')}\n{element.text or ''}"
        outcomes[case.get("name", "")] = (outcome, message)
    print(run.stdout[-2000:])
    return outcomes


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_fleet(verdicts: dict[str, tuple[str, str]], scenario: str) -> None:
    assert scenario in verdicts, f"{scenario} did not run; ran {sorted(verdicts)}"
    outcome, message = verdicts[scenario]
    if outcome == "skipped":
        pytest.skip(message)
    assert outcome == "passed", message


# Without a cluster: what the gateway decides on its own.


def test_jobs_are_routed_by_their_checkpoint_and_upscales_by_none() -> None:
    from daguerre.engine.jobs import HiresFixJob, ModelSpec, TextToImageJob, Tiling, UpscaleJob
    from daguerre.engine.ray.replica import model_key

    model = ModelSpec(id="dreamy", version="3", path="/m", format="diffusers", family="sd15")
    render = TextToImageJob(model, "a cat", "", 128, 128, 4, 7.5, "DDIM", (1,))
    assert model_key(render) == "dreamy@3"
    assert model_key(HiresFixJob(render, b"", 0.5, None, Tiling(256, 32))) == "dreamy@3"
    assert model_key(UpscaleJob(model, b"", 256, 256, Tiling(256, 32))) is None


def test_ray_settings_refuse_a_floor_above_the_ceiling() -> None:
    from pydantic import ValidationError

    from daguerre.settings import RaySettings

    with pytest.raises(ValidationError, match=r"min_replicas \(3\) must be at most max_replicas \(2\)"):
        RaySettings(min_replicas=3, max_replicas=2)
