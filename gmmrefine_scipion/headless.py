"""Headless Scipion: the environment pyworkflow needs, set before pyworkflow is imported.

pyworkflow reads its configuration (``pyworkflow.Config``) from environment variables once, when
it is first imported, and ``import gmmrefine_scipion`` imports pwem -> pyworkflow.  So this
module imports nothing from the plugin: the tests' conftest.py loads it by file path before
anything imports pyworkflow; the demo sets the environment, then restarts itself.

What is set (variables already in the environment win, so a real Scipion installation can be
used):

* SCIPION_DOMAIN=pwem — the domain whose plugins are discovered.
* SCIPION_HOME with ``config/hosts.conf`` (a basic localhost entry) — protocols need a host.
* SCIPION_USER_DATA — projects are created under ``<user data>/projects``.
* SCIPION_PYTHON=sys.executable — protocols run in a child process started with it.
* SCIPION_TESTS + SCIPION_TEST_NOSYNC=1 — test data come from here; nothing is downloaded.
* SCIPION_NOTIFY=False — no usage report over the network.
* MPLBACKEND=Agg — matplotlib without a display; TF_CPP_MIN_LOG_LEVEL=2 — quiet TensorFlow.
"""
import os
import sys

HOSTS_CONF = "[localhost]\nPARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d %_(COMMAND)s\n"


def setup_scipion_env(root, **extra):
    """Set the headless Scipion environment under the folder ``root`` (plus ``extra`` variables)
    and create its folders and hosts.conf.  Returns the values in effect."""
    env = {
        "SCIPION_DOMAIN": "pwem",
        "SCIPION_HOME": os.path.join(root, "scipion_home"),
        "SCIPION_USER_DATA": os.path.join(root, "ScipionUserData"),
        "SCIPION_PYTHON": sys.executable,
        "SCIPION_TESTS": os.path.join(root, "scipion_home", "data", "tests"),
        "SCIPION_TEST_NOSYNC": "1",
        "SCIPION_NOTIFY": "False",
        "MPLBACKEND": "Agg",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    env.update(extra)
    for key, value in env.items():
        os.environ.setdefault(key, value)
    hosts = os.path.join(os.environ["SCIPION_HOME"], "config", "hosts.conf")
    if not os.path.exists(hosts):
        os.makedirs(os.path.dirname(hosts), exist_ok=True)
        with open(hosts, "w") as f:
            f.write(HOSTS_CONF)
    for key in ("SCIPION_USER_DATA", "SCIPION_TESTS"):
        os.makedirs(os.environ[key], exist_ok=True)
    return {key: os.environ[key] for key in env}
