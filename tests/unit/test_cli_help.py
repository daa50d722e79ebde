"""``usernet --help`` and each subcommand's ``--help`` end with examples, and every example
that is a usernet command line parses (a renamed flag would break it here, not for a reader)."""

import shlex

import pytest

from usernet import cli


def _help(argv, capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main(argv + ["--help"])
    assert ei.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", [[], ["run"], ["attach"], ["fwd"]], ids=lambda a: " ".join(a) or "usernet")
def test_help_ends_with_examples(argv, capsys):
    out = _help(argv, capsys)
    tail = out[out.index("examples:"):]
    examples = [ln.strip() for ln in tail.splitlines()[1:] if ln.startswith("  ")]
    assert len(examples) >= 3, tail
    assert any(e.startswith("usernet ") for e in examples)


@pytest.mark.parametrize("epilog", [cli.EPILOG_MAIN, cli.EPILOG_RUN, cli.EPILOG_ATTACH, cli.EPILOG_FWD])
def test_every_example_parses(epilog):
    parser = cli.build_parser()
    seen = 0
    for line in epilog.splitlines():
        if not line.startswith("  "):
            continue            # prose, not an example
        line = line.strip().split("#", 1)[0].split("&", 1)[-1].strip()
        if not line.startswith("usernet ") or line.startswith("usernet slirp4netns"):
            continue
        argv = [a.replace("$!", "1234") for a in shlex.split(line)[1:]]
        args, extra = parser.parse_known_args(argv)
        if args.command == "fwd" and args.spec is None and len(extra) == 1:
            extra = []          # the SPEC after --api-socket (cli.main does the same)
        assert extra == [], (line, extra)
        seen += 1
    assert seen >= 2


def test_slirp4netns_help_ends_with_examples_that_parse(capsys):
    from usernet import slirp4netns as s4
    assert cli.main(["slirp4netns", "--help"]) == 0
    out = capsys.readouterr().out
    tail = out[out.index("Examples:"):]
    lines = [ln.strip().split("#", 1)[0] for ln in tail.splitlines()[1:]
             if ln.strip().startswith("usernet slirp4netns ")]
    assert len(lines) >= 3, tail
    for line in lines:
        argv = [a.replace("$!", "1234").replace("PID", "1")
                for a in shlex.split(line)[2:]]
        if "--netns-type=path" in argv:
            continue        # the path must exist to parse; the flags are checked by the others
        o = s4.parse(argv)
        assert o.target_pid == 1234 and o.tapname == "tap0"
