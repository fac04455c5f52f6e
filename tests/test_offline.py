"""The test run never probes a model hub, whatever the machine's network."""

from __future__ import annotations

import subprocess
import sys


def test_hub_clients_are_offline_for_the_whole_run():
    import os

    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    assert huggingface_hub.constants.is_offline_mode()
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_the_offline_switch_is_set_before_any_hub_client_is_imported():
    """In a fresh interpreter, importing the switch then open_clip leaves the hub offline."""
    code = (
        "import tests.offline, open_clip, huggingface_hub.constants as c; "
        "assert c.HF_HUB_OFFLINE is True"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
