"""The SLURM site: the batch script (validated, no injection) and a real single-node cluster.

The cluster tests start SLURM on this machine with ``scripts/slurm_cluster.sh start`` (installing
Debian's packages when missing) and submit real jobs through it. They are skipped, with the
reason shown, only where SLURM cannot be installed or started; with CI=true a start that fails
after the installation succeeded fails them instead.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from fwimpi.errors import ConfigError
from fwimpi.jobs import sites
from fwimpi.jobs.sites import LocalSite, SlurmSite, load_site
from fwimpi.jobs.slurm import (FINAL_STATES, TEMPLATE, TEMPLATE_KEYS, SlurmError, cancel,
                               job_state, log_tail, parse_job_state, partition_cpus,
                               render_batch_script, run_on_slurm, status, submission_env, submit,
                               wait)
from fwimpi.jobs.spec import load_job_spec

from test_cli import SMALL_JOB

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm_cluster.sh"
CANNOT_INSTALL = 10  # exit status of slurm_cluster.sh when SLURM cannot be installed here
SITE = SlurmSite("slurm", "debug", "00:10:00", None, (), "srun", ("--mpi=pmix",))


@pytest.fixture(autouse=True)
def no_user_sites(tmp_path_factory, monkeypatch):
    """Only the shipped sites, whatever the user running the tests has in ~/.config; returns
    the XDG_CONFIG_HOME that the test may fill."""
    config = tmp_path_factory.mktemp("xdg-config")
    monkeypatch.delenv("FWIMPI_SITES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    return config


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def cluster():
    """A running single-node SLURM cluster for the module; stopped at its end."""
    try:
        proc = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True,
                              timeout=900)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.fail(f"scripts/slurm_cluster.sh start did not finish: {err}")
    said = " | ".join(proc.stderr.strip().splitlines()[-3:]).replace(
        "slurm_cluster: cannot install SLURM here: ", "")
    if proc.returncode == CANNOT_INSTALL:
        pytest.skip(f"SLURM cannot be installed here: {said}")
    if proc.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=120)
        message = (f"scripts/slurm_cluster.sh start failed with status {proc.returncode} after "
                   f"SLURM was installed: {said}")
        if _ci():
            pytest.fail(message)
        pytest.skip(f"SLURM cannot be started here: {message}")
    yield
    subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True, timeout=120)


def _job(folder: Path, ranks: int = 2) -> Path:
    path = folder / "job.yaml"
    path.write_text(SMALL_JOB.replace("ranks_per_job: 1", f"ranks_per_job: {ranks}"))
    return path


def _script(tmp_path, **kw) -> str:
    args = dict(site=SITE, job_path=tmp_path / "job.yaml", job_name="small",
                output_dir=tmp_path / "out", ranks=2, forward_only=False, cores=2)
    args.update(kw)
    return render_batch_script(**args)


# --------------------------------------------------------------------------- site files


def test_sites_load_local_and_slurm():
    local = load_site("local")
    assert isinstance(local, LocalSite) and local.kind == "local" and local.launcher == "mpirun"
    slurm = load_site("slurm")
    assert isinstance(slurm, SlurmSite) and slurm.kind == "slurm"
    assert (slurm.partition, slurm.launcher, slurm.arguments) == ("debug", "srun", ("--mpi=pmix",))
    assert slurm.account is None and slurm.directives == ()


@pytest.mark.parametrize("text, field", [
    ("type: slurm\npartition: debug\ntime_limit: 1:00:00\n", "time_limit"),  # YAML: 3600
    ("type: slurm\npartition: 'debug; id'\n", "partition"),
    ("type: slurm\npartition: debug\naccount: '$(whoami)'\n", "account"),
    ("type: slurm\npartition: debug\ndirectives: '--mem=1G'\n", "directives"),
    ("type: slurm\npartition: debug\ndirectives: ['--mem=1G; rm -rf /']\n", "directives[0]"),
    ("type: slurm\npartition: debug\ndirectives: [\"--mem=1G\\n#SBATCH --wrap=id\"]\n",
     "directives[0]"),
    ("type: slurm\npartition: debug\ndirectives: ['--qos=normal', '--output=/etc/passwd']\n",
     "directives[1]"),
    ("type: slurm\npartition: debug\ndirectives: ['-N 2']\n", "directives[0]"),
    # sbatch takes any unambiguous prefix of a long option: --out= is --output=
    ("type: slurm\npartition: debug\ndirectives: ['--out=/etc/passwd']\n", "directives[0]"),
    ("type: slurm\npartition: debug\ndirectives: ['--chd=/']\n", "directives[0]"),
    ("type: slurm\npartition: debug\ntime_limit: '\u0663\u0660'\n", "time_limit"),  # Arabic-Indic 30
    ("type: slurm\npartition: debug\narguments: ['--mpi=pmix', '$(id)']\n", "arguments"),
    ("type: slurm\npartition: debug\nnodes: 2\n", None),
    ("type: pbs\n", "type"),
])
def test_bad_slurm_site_files_are_rejected_naming_the_field(text, field, tmp_path, monkeypatch):
    monkeypatch.setenv("FWIMPI_SITES", str(tmp_path))
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_site("bad")
    message = str(info.value)
    assert "\n" not in message
    expected = f"site 'bad'.{field}:" if field else "site 'bad': unknown key(s) nodes"
    assert message.startswith(expected), message


# --------------------------------------------------------------------------- user sites


def test_shipped_sites_are_package_data():
    shipped = Path(str(sites.SHIPPED_SITES))
    assert shipped == ROOT / "fwimpi" / "configs" / "sites"
    assert Path(str(TEMPLATE)) == ROOT / "fwimpi" / "configs" / "slurm_batch.sh"
    assert {"local", "slurm"} <= set(sites.known_sites())
    # the old top-level path still works for docs and habits: a symlink into the package
    assert (ROOT / "configs").is_symlink() and (ROOT / "configs" / "sites" / "local.yaml").is_file()


def test_site_folders_order_and_defaults(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("FWIMPI_SITES", f"{a}{os.pathsep}{os.pathsep}{b}")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert sites.site_folders() == (a, b, tmp_path / "xdg" / "fwimpi" / "sites",
                                    sites.SHIPPED_SITES)
    # unset, empty or relative XDG_CONFIG_HOME: ~/.config (the XDG base directory spec)
    monkeypatch.delenv("FWIMPI_SITES")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for value in (None, "", "relative/config"):
        if value is None:
            monkeypatch.delenv("XDG_CONFIG_HOME")
        else:
            monkeypatch.setenv("XDG_CONFIG_HOME", value)
        assert sites.user_site_folders() == (tmp_path / "home" / ".config" / "fwimpi" / "sites",)


def test_user_site_in_fwimpi_sites_overrides_the_shipped_local(tmp_path, monkeypatch):
    (tmp_path / "local.yaml").write_text("launcher: mpiexec\narguments: ['--bind-to', 'none']\n")
    monkeypatch.setenv("FWIMPI_SITES", str(tmp_path))
    site = load_site("local")
    assert site == LocalSite("local", "mpiexec", ("--bind-to", "none"))
    monkeypatch.delenv("FWIMPI_SITES")
    assert load_site("local").launcher == "mpirun"  # the shipped one again


def test_user_site_in_xdg_config_home_adds_a_site(no_user_sites):
    folder = no_user_sites / "fwimpi" / "sites"
    folder.mkdir(parents=True)
    (folder / "cluster.yaml").write_text(
        "type: slurm\npartition: compute\naccount: proj-7\ntime_limit: '2:00:00'\n")
    site = load_site("cluster")
    assert isinstance(site, SlurmSite)
    assert (site.partition, site.account, site.time_limit) == ("compute", "proj-7", "2:00:00")
    assert site.batch_template is None  # the shipped template
    assert {"cluster", "local", "slurm"} <= set(sites.known_sites())
    assert isinstance(load_site("slurm"), SlurmSite)  # the shipped ones are still there


def test_site_precedence_fwimpi_sites_then_xdg_then_shipped(no_user_sites, tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    xdg = no_user_sites / "fwimpi" / "sites"
    for folder in (first, second, xdg):
        folder.mkdir(parents=True)
    (first / "a.yaml").write_text("arguments: [first]\n")
    (second / "a.yaml").write_text("arguments: [second]\n")
    (second / "b.yaml").write_text("arguments: [second]\n")
    (xdg / "b.yaml").write_text("arguments: [xdg]\n")
    (xdg / "c.yaml").write_text("arguments: [xdg]\n")
    (xdg / "slurm.yaml").write_text("type: slurm\npartition: xdg\n")
    monkeypatch.setenv("FWIMPI_SITES", os.pathsep.join(map(str, (tmp_path / "missing", first,
                                                                    second))))
    assert load_site("a").arguments == ("first",)
    assert load_site("b").arguments == ("second",)
    assert load_site("c").arguments == ("xdg",)
    assert load_site("slurm").partition == "xdg"
    assert load_site("local").arguments == ("--oversubscribe",)  # shipped
    # the first folder holding the file wins, even when that file is bad
    (first / "c.yaml").write_text("launcher: 'mpirun; id'\n")
    with pytest.raises(ConfigError, match=r"^site 'c'\.launcher: "):
        load_site("c")


def test_unknown_site_lists_the_known_sites_and_the_folders(no_user_sites, tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text("launcher: mpirun\n")
    (tmp_path / "notes.txt").write_text("not a site\n")
    monkeypatch.setenv("FWIMPI_SITES", str(tmp_path))
    with pytest.raises(ConfigError) as info:
        load_site("nosuch")
    message = str(info.value)
    assert "\n" not in message
    xdg = no_user_sites / "fwimpi" / "sites"
    assert message == (f"site: no site 'nosuch' (known: local, mine, slurm; searched, in this "
                       f"order: {tmp_path}, {xdg}, {sites.SHIPPED_SITES})")
    for name in ("../local", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(ConfigError, match=r"^site: invalid site name "):
            load_site(name)


def test_user_slurm_site_with_its_own_batch_template(tmp_path, monkeypatch):
    folder = tmp_path / "sites"
    (folder / "templates").mkdir(parents=True)
    (folder / "templates" / "batch.sh").write_text(
        "#!/bin/bash\n#SBATCH --job-name=$job_name\n#SBATCH --partition=$partition\n"
        "#SBATCH --ntasks=$ranks\n#SBATCH --output=$log\n$directives\nmodule load openmpi\n"
        "echo \"on $${SLURM_JOB_NODELIST}\"\n"
        "$launcher $arguments -n $ranks $python -m mpi4py -m fwimpi.cli exec $job$forward_only\n")
    (folder / "mine.yaml").write_text("type: slurm\npartition: gpu\n"
                                      "directives: ['--mem-per-cpu=2G']\n"
                                      "batch_template: templates/batch.sh\n")
    absolute = tmp_path / "abs.sh"
    absolute.write_text("#!/bin/bash\n# site $site\n$launcher -n $ranks $python $job\n")
    (folder / "other.yaml").write_text(f"type: slurm\npartition: gpu\nbatch_template: {absolute}\n")
    monkeypatch.setenv("FWIMPI_SITES", str(folder))

    site = load_site("mine")
    assert site.batch_template == folder / "templates" / "batch.sh"
    lines = _script(tmp_path, site=site, ranks=3, cores=8).splitlines()
    assert lines[:5] == ["#!/bin/bash", "#SBATCH --job-name=small", "#SBATCH --partition=gpu",
                         "#SBATCH --ntasks=3",
                         f"#SBATCH --output={tmp_path}/out/slurm/small-%j.log"]
    assert "#SBATCH --mem-per-cpu=2G" in lines and "module load openmpi" in lines
    assert 'echo "on ${SLURM_JOB_NODELIST}"' in lines
    assert lines[-1] == (f"srun --mpi=pmix -n 3 {sys.executable} -m mpi4py -m fwimpi.cli exec "
                         f"{tmp_path}/job.yaml")
    other = load_site("other")
    assert other.batch_template == absolute
    assert _script(tmp_path, site=other).splitlines() == [
        "#!/bin/bash", "# site other", f"srun -n 2 {sys.executable} {tmp_path}/job.yaml"]
    # the shipped site keeps the shipped template
    assert "#SBATCH --chdir=" in _script(tmp_path, site=load_site("slurm"))


@pytest.mark.parametrize("value, message", [
    ("missing.sh", r"no such file: '.*/missing\.sh'"),
    ("''", r"must be the path of a batch script template"),
    ("42", r"must be the path of a batch script template"),
    ("[a.sh]", r"must be the path of a batch script template"),
    ('"a\\nb.sh"', r"must be the path of a batch script template"),
    (".", r"no such file"),
])
def test_bad_batch_template_is_rejected_naming_the_field(value, message, tmp_path, monkeypatch):
    monkeypatch.setenv("FWIMPI_SITES", str(tmp_path))
    (tmp_path / "bad.yaml").write_text(f"type: slurm\npartition: debug\nbatch_template: {value}\n")
    with pytest.raises(ConfigError, match=rf"^site 'bad'\.batch_template: {message}"):
        load_site("bad")


def test_batch_template_only_for_slurm_sites(tmp_path, monkeypatch):
    monkeypatch.setenv("FWIMPI_SITES", str(tmp_path))
    (tmp_path / "t.sh").write_text("#!/bin/bash\n")
    (tmp_path / "bad.yaml").write_text("launcher: mpirun\nbatch_template: t.sh\n")
    with pytest.raises(ConfigError, match=r"^site 'bad': unknown key\(s\) batch_template"):
        load_site("bad")


@pytest.mark.parametrize("text, message", [
    ("#!/bin/bash\necho $HOME\n", r"unknown placeholder\(s\) HOME in "),
    ("#!/bin/bash\n$job $(id)\n", r"has a '\$' that is not a placeholder"),
    ("#!/bin/bash\necho ${unknown} $job_name\n", r"unknown placeholder\(s\) unknown in "),
])
def test_bad_batch_template_contents_are_rejected(text, message, tmp_path):
    template = tmp_path / "t.sh"
    template.write_text(text)
    site = SlurmSite(**{**SITE.__dict__, "batch_template": template})
    with pytest.raises(ConfigError, match=rf"^site 'slurm'\.batch_template: .*{message}"):
        _script(tmp_path, site=site)
    gone = SlurmSite(**{**SITE.__dict__, "batch_template": tmp_path / "gone.sh"})
    with pytest.raises(ConfigError, match=r"^site 'slurm'\.batch_template: cannot read "):
        _script(tmp_path, site=gone)


def test_shipped_template_uses_only_known_placeholders():
    import string

    template = string.Template(TEMPLATE.read_text())
    assert template.is_valid()
    assert set(template.get_identifiers()) <= set(TEMPLATE_KEYS)


# --------------------------------------------------------------------------- the batch script


def test_batch_script_directives_and_command(tmp_path):
    text = _script(tmp_path)
    out = tmp_path / "out"
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for line in ("#SBATCH --job-name=small", "#SBATCH --partition=debug",
                 "#SBATCH --time=00:10:00", "#SBATCH --ntasks=2", f"#SBATCH --chdir={tmp_path}",
                 f"#SBATCH --output={out}/slurm/small-%j.log",
                 "export H5PY_ALWAYS_USE_MPI=1",
                 "export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"):
        assert line in lines, line
    command = (f"srun --mpi=pmix -n 2 {sys.executable} -m mpi4py -m fwimpi.cli exec "
               f"{tmp_path}/job.yaml || status=$?")
    assert command in lines
    assert "--overcommit" not in text and "--account" not in text
    assert "--forward-only" not in text
    # every #SBATCH line comes before the first command
    first_command = next(i for i, l in enumerate(lines) if l and not l.startswith("#"))
    assert all(i < first_command for i, l in enumerate(lines) if l.startswith("#SBATCH"))
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_batch_script_options(tmp_path):
    site = SlurmSite("big", "compute", "2-00:00:00", "proj-42", ("--mem-per-cpu=2G", "--exclusive"),
                     "srun", ("--mpi=pmix", "--cpu-bind=cores"))
    text = _script(tmp_path, site=site, ranks=8, cores=4, forward_only=True)
    lines = text.splitlines()
    for line in ("#SBATCH --ntasks=8", "#SBATCH --overcommit", "#SBATCH --account=proj-42",
                 "#SBATCH --mem-per-cpu=2G", "#SBATCH --exclusive", "#SBATCH --time=2-00:00:00",
                 "#SBATCH --partition=compute"):
        assert line in lines, line
    assert any(l.startswith("srun --mpi=pmix --cpu-bind=cores -n 8 ") and
               l.endswith("exec " + str(tmp_path / "job.yaml") + " --forward-only || status=$?")
               for l in lines)
    assert "#SBATCH --overcommit" not in _script(tmp_path, ranks=4, cores=4)


INJECTIONS = ["foo; rm -rf /", "$(whoami)", "a\nb", "`id`", "a b", "x'y", 'x"y', "-x", "",
              "a|b", "a>b", "a&b", "${HOME}"]


@pytest.mark.parametrize("name", INJECTIONS)
def test_job_name_injection_is_rejected(name, tmp_path):
    with pytest.raises(ConfigError, match=r"^name: "):
        _script(tmp_path, job_name=name)


@pytest.mark.parametrize("field", ["output", "job"])
@pytest.mark.parametrize("path", ["/tmp/foo; rm -rf /", "/tmp/$(whoami)", "/tmp/a\nb",
                                  "/tmp/`id`", "/tmp/a b", "/tmp/x'y", "/tmp/%j", "/tmp/a*",
                                  "relative/out", "/tmp/../etc", "/tmp/a\n#SBATCH --wrap=id"])
def test_path_injection_is_rejected(field, path, tmp_path):
    key = "output_dir" if field == "output" else "job_path"
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        _script(tmp_path, **{key: Path(path)})


def test_interpreter_path_is_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"^python: "):
        _script(tmp_path, python="/opt/my venv/bin/python")


@pytest.mark.parametrize("change, field", [
    (dict(partition="debug\n#SBATCH --wrap=id"), "partition"),
    (dict(time_limit="1; id"), "time_limit"),
    (dict(account="$(id)"), "account"),
    (dict(directives=("--mem=1G; id",)), "directives[0]"),
    (dict(directives=("--chdir=/",)), "directives[0]"),
    (dict(launcher="srun;id"), "launcher"),
    (dict(arguments=("--mpi=pmix", "`id`")), "arguments[1]"),
])
def test_hand_built_site_values_are_checked(change, field, tmp_path):
    site = SlurmSite(**{**SITE.__dict__, **change})
    with pytest.raises(ConfigError) as info:
        _script(tmp_path, site=site)
    assert str(info.value).startswith(f"site 'slurm'.{field}: "), info.value


@pytest.mark.parametrize("ranks", [0, -1, True, 2.0])
def test_ranks_must_be_positive_integers(ranks, tmp_path):
    with pytest.raises(ConfigError, match=r"^ranks: "):
        _script(tmp_path, ranks=ranks)


# --------------------------------------------------------------------------- helpers


def test_parse_job_state_and_log_tail(tmp_path):
    line = ("JobId=7 JobName=small UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=1 "
            "Nice=0 Account=(null) QOS=(null) JobState=CANCELLED Reason=None Dependency=(null)")
    assert parse_job_state(line) == "CANCELLED"
    assert parse_job_state("") == "UNKNOWN"
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert log_tail(log, 3) == "line 97\nline 98\nline 99"
    assert log_tail(tmp_path / "missing.log") == ""


def test_submission_env_drops_mpi_launcher_state(monkeypatch):
    monkeypatch.setenv("PMIX_SERVER_URI41", "1.0;tcp4://127.0.0.1:1")
    monkeypatch.setenv("OMPI_MCA_ess", "singleton")
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env = submission_env()
    assert "PMIX_SERVER_URI41" not in env and "OMPI_MCA_ess" not in env
    assert env["OMPI_ALLOW_RUN_AS_ROOT"] == "1" and env["PATH"] == os.environ["PATH"]


# --------------------------------------------------------------------------- a real cluster


def _batch(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.sbatch"
    path.write_text(f"#!/bin/bash\n#SBATCH --job-name={name}\n#SBATCH --time=5\n"
                    f"#SBATCH --output={folder}/{name}-%j.log\n{body}\n")
    return path


def test_real_two_rank_gradient_job(cluster, tmp_path):
    """A 2-rank gradient job through sbatch and srun --mpi=pmix gives the 1-rank products."""
    # first the same job in this process, on one rank: MPI is then initialised here, and
    # what it leaves in the environment must not reach the SLURM job
    local = tmp_path / "local"
    local.mkdir()
    from fwimpi.cli import main

    assert main(["run", str(_job(local, ranks=1))]) == 0

    job = _job(tmp_path)
    spec = load_job_spec(job)
    out = spec.output
    t0 = time.monotonic()
    job_id, state = run_on_slurm(load_site("slurm"), job, spec.name, out, spec.ranks_per_job,
                                 False, poll=0.25, timeout=180)
    seconds = time.monotonic() - t0
    record = json.loads((out / "slurm" / "job.json").read_text())
    assert state == "COMPLETED", log_tail(Path(record["log"]), 40)
    assert record["job_id"] == job_id and record["state"] == "COMPLETED"
    assert record["script"] == str(out / "slurm" / "small.sbatch")
    assert record["log"] == str(out / "slurm" / f"small-{job_id}.log")
    script = Path(record["script"]).read_text()
    assert "#SBATCH --ntasks=2" in script and "srun --mpi=pmix -n 2 " in script
    log = Path(record["log"]).read_text()
    assert "2 rank(s)" in log and "fwimpi: exit status 0" in log

    summary = json.loads((out / "summary.json").read_text())
    assert summary["simulation"]["ranks"] == 2
    gradient = out / summary["events"]["ev1"]["gradient"]
    assert gradient.is_file() and (out / summary["gradient"]).is_file()
    reference = json.loads((local / "out" / "summary.json").read_text())
    assert summary["events"]["ev1"]["misfit"] == pytest.approx(
        reference["events"]["ev1"]["misfit"], rel=1e-12)
    with h5py.File(gradient) as a, h5py.File(local / "out" / "events" / "ev1" / "gradient.h5") as b:
        for field in ("VP", "RHO"):
            x, y = a["fields"][field][...], b["fields"][field][...]
            assert np.abs(x - y).max() <= 1e-10 * np.abs(y).max()

    st = status(out)
    assert st["state"] == "COMPLETED" and st["job_id"] == job_id
    assert "exit status 0" in st["log_tail"]
    print(f"2-rank gradient job through SLURM: {seconds:.1f} s")


def test_more_ranks_than_cores_overcommit(cluster, tmp_path):
    cpus = partition_cpus("debug")
    assert cpus is not None and cpus >= 1
    if cpus > 8:
        pytest.skip(f"{cpus} cores: overcommitting them takes too many ranks for a test")
    ranks = cpus + 1
    job = _job(tmp_path, ranks=ranks)
    spec = load_job_spec(job)
    # without --overcommit the partition refuses the job at once (EnforcePartLimits=ALL)
    plain = tmp_path / "plain.sbatch"
    plain.write_text(render_batch_script(SITE, job, "plain", spec.output, ranks, True,
                                         cores=10_000))
    with pytest.raises(SlurmError, match="sbatch"):
        submit(plain)
    job_id, state = run_on_slurm(load_site("slurm"), job, spec.name, spec.output, ranks, True,
                                 poll=0.25, timeout=180)
    script = (spec.output / "slurm" / "small.sbatch").read_text()
    assert "#SBATCH --overcommit" in script and "export OMPI_MCA_mpi_yield_when_idle=1" in script
    assert state == "COMPLETED", log_tail(spec.output / "slurm" / f"small-{job_id}.log", 40)
    summary = json.loads((spec.output / "summary.json").read_text())
    assert summary["simulation"]["ranks"] == ranks and "gradient" not in summary


def test_cancelled_running_job_is_reported_cancelled(cluster, tmp_path):
    job_id = submit(_batch(tmp_path, "sleeper", "echo started\nsleep 300"))
    deadline = time.monotonic() + 30
    while (state := job_state(job_id)) != "RUNNING":
        assert state in ("PENDING", "CONFIGURING") and time.monotonic() < deadline, state
        time.sleep(0.1)
    cancel(job_id)
    assert wait(job_id, poll=0.2, timeout=30) == "CANCELLED"
    cancel(job_id)  # cancelling again is no error


def test_real_job_cancelled_after_submission_no_wait(cluster, tmp_path):
    job = _job(tmp_path)
    spec = load_job_spec(job)
    job_id, state = run_on_slurm(load_site("slurm"), job, spec.name, spec.output, 2, False,
                                 wait=False)
    assert state in ("PENDING", "CONFIGURING", "RUNNING"), state
    assert json.loads((spec.output / "slurm" / "job.json").read_text())["state"] == state
    cancel(job_id)
    assert wait(job_id, poll=0.2, timeout=30) == "CANCELLED"
    st = status(spec.output)
    assert st["state"] == "CANCELLED"
    assert json.loads((spec.output / "slurm" / "job.json").read_text())["state"] == "CANCELLED"


def test_failed_job_and_unknown_job(cluster, tmp_path):
    job_id = submit(_batch(tmp_path, "failing", "echo about to fail\nexit 3"))
    assert wait(job_id, poll=0.2, timeout=30) == "FAILED"
    assert "about to fail" in log_tail(tmp_path / f"failing-{job_id}.log")
    assert job_state(987654) == "UNKNOWN" and "UNKNOWN" in FINAL_STATES
    with pytest.raises(SlurmError, match="sbatch"):
        submit(tmp_path / "missing.sbatch")


def test_cli_run_site_slurm_waits_and_status_reports(cluster, tmp_path):
    job = _job(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_"))}
    proc = subprocess.run([sys.executable, "-m", "fwimpi.cli", "run", str(job), "--site", "slurm"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "COMPLETED" in proc.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["simulation"]["ranks"] == 2
    status = subprocess.run([sys.executable, "-m", "fwimpi.cli", "status", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60, env=env)
    assert status.returncode == 0 and "COMPLETED" in status.stdout


def test_isolation_runs_each_event_as_a_job_step_and_retries_a_killed_one(cluster, tmp_path,
                                                                          monkeypatch):
    """With `isolation: event`, 4 events (2 at a time) run as their own job steps; a rank of
    one of them killed by SIGKILL ends only that step, which is retried: the job completes and
    its products equal an ordinary run's."""
    from test_events import JOB as EVENTS_JOB

    sites_dir = tmp_path / "sites"
    sites_dir.mkdir()
    (sites_dir / "isolated.yaml").write_text(
        "type: slurm\npartition: debug\ntime_limit: '00:10:00'\nisolation: event\n")
    monkeypatch.setenv("FWIMPI_SITES", str(sites_dir))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain/job.yaml").write_text(EVENTS_JOB.replace("end_time_in_seconds: 0.6",
                                                                "end_time_in_seconds: 1.5"))
    from fwimpi.cli import main

    assert main(["-q", "run", str(tmp_path / "plain/job.yaml")]) == 0
    job = tmp_path / "job.yaml"
    job.write_text((tmp_path / "plain/job.yaml").read_text())
    spec = load_job_spec(job)
    killed = []

    def kill_once():  # SIGKILL a rank of event ev2's first job step
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            pids = subprocess.run(["pgrep", "-f", "fwimpi.cli exec .* --events ev2"],
                                  capture_output=True, text=True).stdout.split()
            if pids:
                time.sleep(0.5)
                os.kill(int(pids[0]), 9)
                killed.append(pids[0])
            time.sleep(0.05)

    import threading

    killer = threading.Thread(target=kill_once, daemon=True)
    killer.start()
    job_id, state = run_on_slurm(load_site("isolated"), job, spec.name, spec.output, 1, False,
                                 poll=0.25, timeout=300, concurrent_events=2)
    killer.join(5)
    record = json.loads((spec.output / "slurm" / "job.json").read_text())
    log = Path(record["log"]).read_text()
    assert state == "COMPLETED", log[-3000:]
    assert killed, "the event's job step was never seen"
    assert "fwimpi.cli steps" in Path(record["script"]).read_text()
    assert "event ev2: its job step failed" in log and "retried" in log
    assert "event ev2: job step, attempt 2 of 2" in log
    ref = json.loads((tmp_path / "plain/out/summary.json").read_text())
    got = json.loads((spec.output / "summary.json").read_text())
    for name in ("ev0", "ev1", "ev2", "ev3"):
        assert got["events"][name]["misfit"] == pytest.approx(ref["events"][name]["misfit"],
                                                              rel=1e-12)
