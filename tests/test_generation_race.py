"""1,000 jobs with a revocation at a random moment each: no output is ever released without consent."""

from consent_service.app import build_runner
from tests.conftest import full_log_check


def test_generation_race_never_releases_without_consent(settings, tiny_wan):
    from fastapi.testclient import TestClient

    from bench.gate_race import run_trials, setup_owner
    from consent_service.app import create_app

    settings = settings.model_copy(update={"generator_model_dir": tiny_wan})
    with TestClient(create_app(settings)) as client:
        runtime = client.app.state.runtime
        runtime.jobs.stop()
        runner = build_runner(runtime)  # real C2PA signing: the race covers the whole release path
        setup_owner(runtime.engine, runtime.replica)
        # Warm the pipeline so the delays below straddle the whole run, not the first load.
        result = run_trials(
            engine=runtime.engine,
            replica=runtime.replica,
            runner=runner,
            trials=3,
            max_delay=0.2,
            prefix="warm",
        )
        result = run_trials(
            engine=runtime.engine, replica=runtime.replica, runner=runner, trials=1000, max_delay=0.12, seed=7
        )
        assert result["released_without_consent"] == 0, result
        # Revocations landed before, during and after the runs: both outcomes occur.
        assert result["outcomes"].get("released", 0) > 0 and result["outcomes"].get("cancelled", 0) > 0, (
            result
        )
        full_log_check(runtime.log)
