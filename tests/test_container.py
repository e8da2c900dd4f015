"""Fast checks of the container files (the real build and run: `make container container-test`)."""
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from gentract_bids.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DESCRIPTOR = ROOT / "boutiques" / "gentract.json"
INVOCATION = ROOT / "boutiques" / "example_invocation.json"


def _descriptor_script():
    """scripts/boutiques_descriptor.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "boutiques_descriptor", ROOT / "scripts" / "boutiques_descriptor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tool(name):
    path = shutil.which(name) or (BIN / name)
    assert Path(path).exists(), f"{name} missing: pip install the test extra"
    return str(path)


def test_hadolint_clean():
    out = subprocess.run([_tool("hadolint"), str(ROOT / "Dockerfile")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_boutiques_descriptor_validates():
    out = subprocess.run([_tool("bosh"), "validate", str(DESCRIPTOR)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_descriptor_flags_are_the_parsers():
    flags = {s for a in build_parser()._actions for s in a.option_strings}
    dests = {a.dest for a in build_parser()._actions}
    for inp in json.loads(DESCRIPTOR.read_text())["inputs"]:
        if "command-line-flag" in inp:
            assert inp["command-line-flag"] in flags, inp["id"]
        else:
            assert inp["id"] in dests, inp["id"]


def test_boutiques_descriptor_is_generated_from_the_parser():
    expected = _descriptor_script().expected_text(DESCRIPTOR)
    assert DESCRIPTOR.read_text() == expected, (
        "boutiques/gentract.json lags gentract_bids/cli/parser.py: run `make boutiques`")


def test_boutiques_descriptor_check_fails_on_a_stale_descriptor(tmp_path, capsys):
    script = _descriptor_script()
    stale = json.loads(DESCRIPTOR.read_text())
    stale["inputs"] = [i for i in stale["inputs"] if i["id"] != "guidance_scale"]
    path = tmp_path / "gentract.json"
    path.write_text(json.dumps(stale, indent=2) + "\n")
    assert script.main(["--check", "--descriptor", str(path)]) == 1
    assert "run `make boutiques`" in capsys.readouterr().err
    assert script.main(["--descriptor", str(path)]) == 0  # rewritten, author etc. kept
    assert path.read_text() == script.expected_text(DESCRIPTOR)
    assert script.main(["--check", "--descriptor", str(path)]) == 0


def test_every_parser_option_is_a_descriptor_input():
    inputs = {i["id"]: i for i in json.loads(DESCRIPTOR.read_text())["inputs"]}
    for action in build_parser()._actions:
        if action.dest in ("help", "version"):
            continue
        assert action.dest in inputs, f"{action.dest} missing: run `make boutiques`"
        if action.option_strings:
            assert inputs[action.dest]["command-line-flag"] in action.option_strings


def test_descriptor_bounds_are_what_the_parser_refuses(tmp_path):
    """Every minimum/maximum of the descriptor is the parser's: the bound itself parses, one
    step past it is refused with a message naming the option (what bosh checks before a run is
    what gentract would refuse)."""
    import pytest

    from gentract_bids.cli.parser import parse_args
    from gentract_bids.errors import UsageError

    bounded = [i for i in json.loads(DESCRIPTOR.read_text())["inputs"]
               if "minimum" in i or "maximum" in i]
    assert {i["id"] for i in bounded} >= {"n_streamlines", "random_seed", "nprocs", "steps",
                                         "bundle_min_inside", "min_registration_dice"}
    (tmp_path / "bids").mkdir()
    base = [str(tmp_path / "bids"), str(tmp_path / "out"), "participant"]
    for inp in bounded:
        flag, step = inp["command-line-flag"], 1 if inp.get("integer") else 0.5
        extra = ["--bundle-atlas", str(tmp_path)] if inp["id"].startswith("bundle_") else []
        for key, sign in (("minimum", -1), ("maximum", 1)):
            if key not in inp or inp["id"] == "sh_order":  # sh_order: even numbers only
                continue
            parse_args(base + extra + [flag, str(inp[key])])
            with pytest.raises(UsageError, match=re.escape(flag)):
                parse_args(base + extra + [flag, str(inp[key] + sign * step)])


def test_boutiques_example_invocation_simulates_a_gentract_command_line():
    out = subprocess.run([_tool("bosh"), "exec", "simulate", "-i", str(INVOCATION),
                          str(DESCRIPTOR)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    argv = shlex.split(lines[lines.index("Generated Command:") + 1])
    assert argv[0] == "gentract"
    opts = build_parser().parse_args(argv[1:])
    invocation = json.loads(INVOCATION.read_text())
    for key, value in invocation.items():
        parsed = getattr(opts, key)
        assert (str(parsed) if isinstance(parsed, Path) else parsed) == value, key


def test_dockerfile_and_singularity_agree():
    docker = (ROOT / "Dockerfile").read_text()
    sing = (ROOT / "Singularity.def").read_text()
    assert 'ENTRYPOINT ["gentract"]' in docker and "exec gentract" in sing
    assert re.search(r"^USER 999$", docker, re.M)
    archive = re.search(r"^From: (\S+)$", sing, re.M).group(1)
    assert "Bootstrap: oci-archive" in sing and f"-o {archive} " in sing
    for var in ("NIPYPE_NO_ET=1", "TEMPLATEFLOW_AUTOUPDATE=0", "/opt/venv/bin"):
        assert var in docker and var in sing, var
    pins, cuda = (dict(line.split("==") for line in (ROOT / name).read_text().splitlines()
                       if line and not line.startswith("#"))
                  for name in ("requirements.lock", "requirements-cuda.lock"))
    assert cuda["torch"] == pins["torch"] and "triton" in cuda
    assert "+cpu" not in (ROOT / "requirements-cuda.lock").read_text()


def test_image_labels_come_from_the_package_metadata():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    labels = dict(re.findall(r'org\.opencontainers\.image\.(\w+)="([^"]*)"',
                             (ROOT / "Dockerfile").read_text()))
    assert labels["version"] == "${VERSION}" and labels["licenses"] == project["license"]["text"]
    # A source URL only if the project publishes one (pyproject [project.urls]): none invented.
    urls = set(project.get("urls", {}).values())
    assert labels.get("source", None) in urls | ({None} if not urls else set())
    assert not re.search(r"https?://", " ".join(v for k, v in labels.items() if k != "source"))


def test_image_leaves_out_exactly_the_test_extra():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    docker = (ROOT / "Dockerfile").read_text().replace("\\\n", "")
    left_out = set(re.search(r'^ARG TEST_ONLY="([^"]+)"', docker, re.M).group(1).split("|"))
    test_extra = {r.split("==")[0] for r in project["optional-dependencies"]["test"]}
    runtime = {r.split("==")[0] for r in project["dependencies"]}
    pins = {line.split("==")[0] for line in (ROOT / "requirements.lock").read_text().split()}
    assert test_extra <= left_out and left_out <= pins and not left_out & runtime


def test_ci_runs_make_targets_that_exist():
    import yaml

    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    config = yaml.safe_load((ROOT / ".circleci" / "config.yml").read_text())
    runs = [step["run"] if isinstance(step["run"], str) else step["run"]["command"]
            for job in config["jobs"].values() for step in job["steps"]
            if isinstance(step, dict) and "run" in step]
    called = re.findall(r"make ([\w-]+)", " ".join(runs))
    assert {"container", "container-test", "container-charliecloud",
            "container-boutiques"} <= set(called) <= targets
    assert "bash .ci/run" in runs
    assert set(config["workflows"]["main"]["jobs"]) == {"test", "container"}
    # container-test checks the outputs against the expected-file list
    assert "docker/expected_outputs.txt" in (ROOT / "scripts" / "container_test.sh").read_text()
    expected = (ROOT / "docker" / "expected_outputs.txt").read_text().split()
    assert "sub-01/dwi/sub-01_space-dwi_model-gentract_streamlines.trx" in expected


def _ci_run(tmp_path, fail_on, ci):
    """.ci/run in a copy of the repository layout, with a `make` that records its arguments."""
    (tmp_path / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "make").write_text(
        f'#!/bin/sh\necho "$*" >> "{tmp_path}/calls"\necho "log of $*"\n'
        f'case "$*" in *{fail_on}*) exit 2;; esac\n')
    (bin_dir / "make").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", **({"CI": "true"} if ci else {})}
    out = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], env=env,
                         capture_output=True, text=True)
    calls = (tmp_path / "calls").read_text().splitlines()
    return out, calls


def test_ci_run_is_the_readme_test_command_then_the_container_only_on_ci(tmp_path):
    assert "CI runs exactly this: bash .ci/run" in (ROOT / "README.md").read_text()
    out, calls = _ci_run(tmp_path / "local", fail_on="nothing", ci=False)
    assert out.returncode == 0 and calls == ["test"]
    out, calls = _ci_run(tmp_path / "ci", fail_on="nothing", ci=True)
    assert out.returncode == 0 and calls == ["test", "container container-test"]
    assert (tmp_path / "ci" / "container.log").read_text() == "log of container container-test\n"


def test_ci_run_fails_with_the_container_log_tail(tmp_path):
    out, calls = _ci_run(tmp_path, fail_on="container-test", ci=True)
    assert out.returncode == 1 and calls == ["test", "container container-test"]
    assert "log of container container-test" in out.stdout


def test_container_build_says_how_to_give_the_torch_wheel(tmp_path):
    empty = tmp_path / "wheels"
    empty.mkdir()
    env = {"PATH": "/usr/bin:/bin", "PIP_CONFIG_FILE": "/dev/null",
           "XDG_CONFIG_DIRS": str(tmp_path), "HOME": str(tmp_path), "PIP_FIND_LINKS": str(empty)}
    for extra, named in (({}, f"pip find-links: {empty}"), ({"TORCH_WHEEL": "/no.whl"}, "")):
        out = subprocess.run(["bash", str(ROOT / "scripts" / "container_build.sh")],
                             env={**env, **extra}, capture_output=True, text=True)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "no CPU torch wheel torch-2.13.0+cpu" in out.stderr and named in out.stderr
        assert "TORCH_WHEEL=index" in out.stderr and not out.stdout


def test_a_changed_source_rebuilds_the_package_layer():
    # The package comes in through a bind mount, whose content the layer cache does not see.
    docker = (ROOT / "Dockerfile").read_text()
    assert docker.index("ARG SOURCE_SHA") < docker.index("--mount=type=bind,target=/opt/src")
    build = (ROOT / "scripts" / "container_build.sh").read_text()
    assert '--build-arg SOURCE_SHA="$source_sha"' in build and "gentract_bids" in build
