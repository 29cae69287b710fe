"""The file the browser tests fetch, shared by the fixture and the tests."""

import os

PAYLOAD = os.urandom(5 * 1024 * 1024)
