"""The real engine, made to speak other protocol versions: an older or newer release's engine.

    python tests/bot/versioned_engine.py 1,2 --profile P serve

Only the version list changes (engine.protocol.SUPPORTED_VERSIONS and PROTOCOL_VERSION);
everything else is this checkout's engine, as an engine one release away would be.
"""

import runpy
import sys

import engine.protocol as protocol

versions = tuple(int(v) for v in sys.argv[1].split(","))
protocol.SUPPORTED_VERSIONS = versions
protocol.PROTOCOL_VERSION = max(versions)
sys.argv = ["engine", *sys.argv[2:]]
runpy.run_module("engine", run_name="__main__", alter_sys=True)
