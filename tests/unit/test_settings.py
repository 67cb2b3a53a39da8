from __future__ import annotations

import pytest

from stream.settings import SettingsError, StreamSettings, load_settings


def test_defaults_match_the_documented_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("STREAM_EVENTS_TOPIC", "STREAM_TOP_K", "STREAM_AUTO_OFFSET_RESET"):
        monkeypatch.delenv(var, raising=False)
    s = StreamSettings(_env_file=None)  # type: ignore[call-arg]
    assert (s.events_topic, s.recommendations_topic, s.metrics_topic, s.dead_letter_topic) == (
        "events",
        "recommendations",
        "metrics",
        "events.dlq",
    )
    assert s.top_k == 10 and s.auto_offset_reset == "earliest"


def test_env_prefix_and_cli_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_TOP_K", "5")
    monkeypatch.setenv("STREAM_GROUP_ID", "from-env")
    monkeypatch.setenv("STREAM_MODELS", "knn,popularity")
    s = load_settings(group_id="from-cli", events_topic=None)
    assert s.top_k == 5 and s.group_id == "from-cli" and s.events_topic == "events"
    assert s.models == ("knn", "popularity")


def test_dotenv_is_read(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    (tmp_path / ".env").write_text("STREAM_METRICS_TOPIC=m2\n")  # type: ignore[operator]
    assert load_settings().metrics_topic == "m2"


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("STREAM_TOP_K", "zero", "STREAM_TOP_K"),
        ("STREAM_TOP_K", "0", "STREAM_TOP_K"),
        ("STREAM_AUTO_OFFSET_RESET", "middle", "STREAM_AUTO_OFFSET_RESET"),
        ("STREAM_MODELS", "knn,deep_magic", "STREAM_MODELS"),
        ("STREAM_DRIFT_DETECTOR", "psychic", "STREAM_DRIFT_DETECTOR"),
        ("STREAM_BOOTSTRAP_SERVERS", " , ", "STREAM_BOOTSTRAP_SERVERS"),
    ],
)
def test_wrong_setting_fails_naming_it(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, named: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError, match=named):
        load_settings()


def test_recommender_must_be_configured() -> None:
    with pytest.raises(SettingsError, match="STREAM_RECOMMENDER"):
        load_settings(models=("popularity",), recommender="knn")


def test_security_settings_pass_through_and_stay_secret() -> None:
    s = load_settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="svc",
        sasl_plain_password="hunter2",
    )
    opts = s.kafka_common()
    assert opts["security_protocol"] == "SASL_SSL"
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_password"] == "hunter2"
    assert "hunter2" not in repr(s)
