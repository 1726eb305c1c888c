"""A throwaway unprivileged user for the rootless tests (docs/rootless.md): made with a home and a runtime directory
in a temporary directory, runs commands and ansible-playbook with a clean environment (no sudo, no capabilities),
and is removed afterwards with everything it ran (any process it still has is ended by pid, and reported)."""
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
VENV = os.path.join(REPO_ROOT, ".venv", "bin")
COLLECTIONS = os.path.join(REPO_ROOT, ".build", "collections")
# the subordinate ids a rootless image build maps the guest's own ids onto (docs/rootless.md's admin step)
SUBIDS = 65536


def user_pids(user):
    """The user's live processes (an ended one waiting to be reaped by init is not running)."""
    out = subprocess.run(["ps", "-u", user, "-o", "pid=,stat="], capture_output=True, text=True, check=False).stdout
    return [int(line.split()[0]) for line in out.splitlines() if line.split() and not line.split()[1].startswith("Z")]


@contextlib.contextmanager
def throwaway_user(playbook):
    """(name, home, runtime dir, base) of a new system user with no privileges, `playbook` written to base/play.yml;
    afterwards its processes are killed, the user and base removed, and leftover processes fail the test."""
    base = tempfile.mkdtemp(prefix="qemulab-rootless-")
    os.chmod(base, 0o755)
    name = "qlr" + secrets.token_hex(4)
    home, runtime = os.path.join(base, "home"), os.path.join(base, "runtime")
    subprocess.run(["useradd", "--system", "--create-home", "--home-dir", home, "--shell", "/usr/sbin/nologin",
                    name], check=True)
    entry = pwd.getpwnam(name)
    os.mkdir(runtime, 0o700)
    os.chown(runtime, entry.pw_uid, entry.pw_gid)
    with open(os.path.join(base, "play.yml"), "w") as f:
        f.write(playbook)
    leftovers = []
    try:
        yield name, home, runtime, base
    finally:
        leftovers = user_pids(name)
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while user_pids(name) and time.monotonic() < deadline:
            time.sleep(0.1)
        subprocess.run(["userdel", "--remove", name], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
    assert not leftovers, "processes of the test user were left running: %s" % leftovers


def as_user(user, home, runtime, argv, timeout=180, env=None, **kwargs):
    """Run argv as the user with a clean environment (no sudo, no capabilities); `env` adds or overrides variables."""
    clean = ["env", "-i", "HOME=" + home, "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
             "XDG_RUNTIME_DIR=" + runtime, "ANSIBLE_COLLECTIONS_PATH=" + COLLECTIONS,
             "ANSIBLE_HOME=" + os.path.join(home, ".ansible"),
             "ANSIBLE_PYTHON_INTERPRETER=" + os.path.join(VENV, "python")]
    clean += ["%s=%s" % item for item in sorted((env or {}).items())]  # env(1) sets them in order: the last wins
    return subprocess.run(["runuser", "-u", user, "--"] + clean + argv, capture_output=True, text=True,
                          cwd=home, timeout=timeout, check=False, **kwargs)


def lab_run_env(own):
    """What a user's `lab.yml` run needs besides as_user's clean environment: Ansible's files under `own` (not the
    home), and the settings the checkout's ansible.cfg gives root's runs (its paths are root's checkout's)."""
    return {"ANSIBLE_HOME": os.path.join(own, "ansible"), "ANSIBLE_LOCAL_TEMP": os.path.join(own, "ansible", "tmp"),
            "ANSIBLE_REMOTE_TEMP": os.path.join(own, "ansible", "tmp"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": os.path.join(own, "cp"),
            "ANSIBLE_PIPELINING": "True", "ANSIBLE_FORKS": "20",
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=120s -o LogLevel=ERROR"}


def playbook_argv(playbook, extra_vars_file):
    return [os.path.join(VENV, "ansible-playbook"), "-i", "localhost,", "-c", "local", playbook,
            "-e", "@" + extra_vars_file]


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid, timeout=5):
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def files_under(path):
    return [os.path.join(d, f) for d, _, files in os.walk(path) for f in files]


def subid_lines(name):
    lines = []
    for path in ("/etc/subuid", "/etc/subgid"):
        with open(path) as f:
            lines += [line for line in f if line.split(":")[0] == name]
    return lines


def free_subid_start():
    """A range of SUBIDS ids no line of /etc/subuid or /etc/subgid uses (above every uid a system hands out)."""
    taken = []
    for path in ("/etc/subuid", "/etc/subgid"):
        with open(path) as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                    taken.append((int(fields[1]), int(fields[1]) + int(fields[2])))
    start = 1_800_000_000 + secrets.randbelow(1000) * SUBIDS
    while any(a < start + SUBIDS and start < b for a, b in taken):
        start += SUBIDS
    return start


@contextlib.contextmanager
def user_with_subids(before_removal=None):
    """throwaway_user's (name, home, runtime, base) with a subordinate id range (the image build needs one);
    `before_removal(name, home, runtime, base)` runs first on the way out (a lab's cleanup), then the user's last
    processes are waited for (usermod refuses a user that has one) and its ids removed."""
    with throwaway_user("") as (name, home, runtime, base):
        start = free_subid_start()
        ids = "%d-%d" % (start, start + SUBIDS - 1)
        subprocess.run(["usermod", "--add-subuids", ids, "--add-subgids", ids, name], check=True)
        try:
            yield name, home, runtime, base
        finally:
            try:
                if before_removal:
                    before_removal(name, home, runtime, base)
            finally:
                deadline = time.monotonic() + 10
                while user_pids(name) and time.monotonic() < deadline:
                    time.sleep(0.1)
                subprocess.run(["usermod", "--del-subuids", ids, "--del-subgids", ids, name], capture_output=True,
                               check=False)
        assert not subid_lines(name), "%s's subordinate ids are still in /etc/subuid or /etc/subgid" % name
