"""The CLI as a newcomer meets it (issue 26): a complete plain-text ``skewless --help`` with one line per
command, help text and defaults on every option, and a readable ``produce`` summary."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from skewless.cli import OVERVIEW, build_parser, main, overview

ROOT = Path(__file__).resolve().parents[2]
# options of modules another helper owns this round (issue 26: skewless/commands/monitor.py); remove once they
# have help text. Any other option without help fails the test.



def subparsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) of every (sub)command, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from subparsers(sub, (*path, name))


def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_is_complete_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys)
    description = text.split("\n\n")[1]
    assert description.startswith("skewless is a streaming-first feature pipeline")
    assert description.rstrip().endswith("."), description  # not cut mid-sentence
    assert "``" not in text and ":func:" not in text and ":data:" not in text  # no RST markup
    assert "skewless COMMAND --help" in text
    assert max(map(len, text.splitlines())) <= 80, text


def test_top_level_help_lists_every_command_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys)
    lines = text.splitlines()
    names = [path[0] for path, _ in subparsers(build_parser()) if len(path) == 1]
    assert len(names) > 10
    for name in names:
        (line,) = [ln for ln in lines if ln.split()[:1] == [name] and ln.startswith("    ")]
        summary = line.strip().removeprefix(name).strip()
        assert len(summary) > 15, line
        # the summary is complete on its line: the next line is another command or a heading
        following = lines[lines.index(line) + 1]
        assert not following.strip() or following.split()[0] in names or following.rstrip().endswith(":"), following


def test_every_option_of_every_command_has_help() -> None:
    missing = []
    for path, parser in subparsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            flag = action.option_strings[-1] if action.option_strings else action.dest
            if not (action.help or "").strip():
                missing.append(f"skewless {' '.join(path)} {flag}")
    assert not missing, f"options without help text: {missing}"


def test_the_overview_groups_every_command_once() -> None:
    names = sorted(path[0] for path, _ in subparsers(build_parser()) if len(path) == 1)
    assert sorted(name for _, commands in OVERVIEW for name, _ in commands) == names
    # a command missing from OVERVIEW is still listed, with its HELP
    assert "  other:\n    newcmd  does new things" in overview({"demo": "x", "newcmd": "does new things"})


@pytest.mark.parametrize(("argv", "expected"), [
    (("produce",), ["--seed SEED", "(default: 0)", "--users USERS", "(default: 1000)", "--partitions",
                    "(default: 3)", "(default: 1000.0)", "(default: 0.03)", "Kafka bootstrap servers (default:"]),
    (("submit",), ["--starting-offsets", "(default: earliest)", "--parallelism", "(default: the profile's flink.parallelism, else 1)",
                   "--replace"]),
])
def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...],
                                 expected: list[str]) -> None:
    text = " ".join(help_of(capsys, *argv).split())  # argparse wraps lines: compare word sequences
    for needle in expected:
        assert needle in text, f"{needle!r} not in {argv} --help:\n{text}"
    assert "(default: None)" not in text and "(default: False)" not in text
    assert text.count("default: feature_defs") == 1  # an option's own default is not repeated


def test_produce_prints_a_readable_summary(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    """Kafka replaced by fakes: what `produce` prints once every record is acknowledged."""
    import skewless.producer.kafka_producer as kafka_producer
    import skewless.engines.kafka as kafka_clients
    import skewless.stack.kafka as kafka
    from skewless.producer.kafka_producer import DeliveryReport

    monkeypatch.setattr(kafka_clients, "metadata_ok", lambda *a, **k: True)
    monkeypatch.setattr(kafka, "create_topics", lambda *a, **k: None)
    monkeypatch.setattr(kafka_producer, "produce_records",
                        lambda bootstrap, topic, records, **kw: DeliveryReport(delivered=len(records)))
    manifest = tmp_path / "manifest.json"
    assert main(["produce", "--repo", str(ROOT / "feature_defs"), "--rate", "0", "--duration", "0.2",
                 "--manifest", str(manifest)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("skewless produce: 2,000 records to topic orders in "), lines
    assert "{" not in "\n".join(lines) and "'" not in "\n".join(lines)  # no Python dict
    generated = lines[1].strip()
    assert generated.startswith("generated: ") and "clean" in generated and "malformed" in generated, lines
    counts = {kind: int(n.replace(",", "")) for n, kind in (part.split() for part in
                                                            generated.removeprefix("generated: ").split(", "))}
    assert sum(counts.values()) == 2000 and counts["duplicate"] > 0, counts
    assert str(manifest) in lines[2] and manifest.exists()
