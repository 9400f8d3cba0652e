"""The browser tests' shared parts (and ``client_usage.ts``, type-checked by
``make lint``)."""

import pytest

# Its checks (added_up) are asserts: rewritten, they show the values on failure.
pytest.register_assert_rewrite("tests.browser.harness")
