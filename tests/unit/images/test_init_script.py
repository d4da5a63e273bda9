"""xvm's /init (init.sh) run under busybox sh on the host, with the system calls stubbed.

Shell functions take precedence over busybox applets, so the stubs below
replace mount, setsid and dd while the rest of init.sh runs for real: the
command decoding, the status capture and the byte written to "port 0xF4"
(here a file).
"""

from __future__ import annotations

import base64
import shlex
import shutil
import subprocess

import pytest

from xvm.images import DEMO_COMMAND, command_cmdline
from xvm.images.initramfs import INIT_SCRIPT

BUSYBOX = shutil.which("busybox")
needs_busybox = pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed")

STUBS = """
mkdir() { :; }
mount() { :; }
hostname() { :; }
sync() { :; }
cd() { :; }
setsid() { shift; "$@"; }
dd() { cat > "$XVM_TEST_PORT"; }
xvmexit() { cat > "$XVM_TEST_PORT"; }
reboot() { echo "stub: reboot $*"; }
poweroff() { echo "stub: poweroff $*"; }
"""


def run_init(tmp_path, env_extra, stdin=b""):
    lines = INIT_SCRIPT.read_text().splitlines(keepends=True)
    script = tmp_path / "init"
    script.write_text(lines[0] + STUBS + "".join(lines[1:]))
    port = tmp_path / "port"
    env = {"PATH": "/usr/bin:/bin", "XVM_TEST_PORT": str(port), **env_extra}
    result = subprocess.run([BUSYBOX, "sh", str(script)], input=stdin, env=env, capture_output=True, timeout=20)
    return result, port.read_bytes() if port.exists() else None


def test_cmdline_is_one_parameter_init_can_decode():
    argv = ["printf", "%s|", "two words", "it's", 'a "quote"', "x=y", ""]
    param = command_cmdline(argv)
    name, _, value = param.partition("=")
    assert name == "xvmcmd" and "." not in name
    assert " " not in param and '"' not in param and "'" not in param
    assert shlex.split(base64.b64decode(value).decode()) == argv


def test_cmdline_rejects_empty_and_huge():
    from xvm.errors import ConfigError

    with pytest.raises(ConfigError):
        command_cmdline([])
    with pytest.raises(ConfigError):
        command_cmdline(["echo", "x" * 4000])


@needs_busybox
def test_init_runs_the_command_and_writes_its_status(tmp_path):
    argv = ["sh", "-c", "echo \"out: $1 $2\"; exit 7", "sh", "two  spaces", "it's"]
    result, port = run_init(tmp_path, {"xvmcmd": command_cmdline(argv).partition("=")[2]})
    assert b"out: two  spaces it's" in result.stdout
    assert port == bytes([7])
    assert b"stub: reboot -f" in result.stdout  # reached only because the port write did not stop us


@needs_busybox
@pytest.mark.parametrize("status", [0, 1, 255])
def test_init_status_byte(tmp_path, status):
    _, port = run_init(tmp_path, {"xvmcmd": command_cmdline(["sh", "-c", f"exit {status}"]).partition("=")[2]})
    assert port == bytes([status])


@needs_busybox
def test_init_demo_command_is_valid_shell(tmp_path):
    result, port = run_init(tmp_path, {"xvmcmd": command_cmdline(DEMO_COMMAND).partition("=")[2]})
    assert b"xvm demo done" in result.stdout and port == b"\0"


@needs_busybox
def test_init_without_command_starts_a_shell_and_exits_zero(tmp_path):
    result, port = run_init(tmp_path, {}, stdin=b"echo from-the-shell\n")
    assert b"exit the shell to stop the VM" in result.stdout
    assert b"from-the-shell" in result.stdout
    assert port == b"\0"
    assert b"stub: poweroff -f" in result.stdout


@needs_busybox
def test_init_rejects_bad_base64(tmp_path):
    result, port = run_init(tmp_path, {"xvmcmd": "!!!not base64"})
    assert port == bytes([126])
