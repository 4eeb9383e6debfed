"""tools/install_environment.py: uv gets pip's index settings, with pip's precedence."""

import itertools
import subprocess
import sys

from conftest import load_tool

install = load_tool("install_environment")

LISTING = """\
:env:.default-timeout='180'
:env:.find-links='/opt/wheels'
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/elsewhere'
install.index-url='https://mirror.example/simple'
"""


def test_pip_settings_take_each_source_option_with_pips_precedence():
    settings = install.pip_settings(LISTING)
    assert settings == {
        "constraint": ["/etc/xdg/pip/constraints.txt"],
        "extra-index-url": ["file:///opt/pypi/simple", "file:///opt/pypi-more/simple"],
        "find-links": ["/opt/wheels"],  # the environment variable overrides the file
        "index-url": ["https://mirror.example/simple"],
    }


def test_uv_command_passes_every_value_and_matches_over_all_indexes_as_pip_does():
    command = install.uv_command(".[chain,dev]", install.pip_settings(LISTING))
    pairs = set(itertools.pairwise(command))
    assert ("--extra-index-url", "file:///opt/pypi-more/simple") in pairs
    assert ("--constraints", "/etc/xdg/pip/constraints.txt") in pairs
    assert ("--index-strategy", "unsafe-best-match") in pairs
    assert command[-2:] == ["--editable", ".[chain,dev]"]
    assert "/etc/ssl/certs/ca-certificates.crt" not in command


def test_this_machines_pip_configuration_parses():
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             check=True).stdout
    settings = install.pip_settings(listing)
    assert set(settings) <= set(install.PIP_TO_UV)
    assert all(isinstance(value, str) and value for values in settings.values() for value in values)
